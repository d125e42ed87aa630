//! The `sightline` command line: the clap types, and a dispatch that calls
//! into the library, where each command's work lives.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::auth::cli::UserAction;
use server::bench::{self, BenchOptions, Scenario};
use server::config::{Overrides, ServeArgs};
use server::simulate::{self, SimOptions};
use server::store::registry::DeviceAction;
use server::Listeners;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

/// Sightline: an IoT dashboard with an embedded MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "sightline", version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `debug,rumqttd=warn` [default: info,rumqttd=off].
    #[arg(long, env = "SIGHTLINE_LOG", global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run the server: MQTT broker, ingest, storage, dashboard.
    Serve(Box<ServeArgs>),
    /// Connect simulated devices to a broker and publish readings.
    Simulate(SimulateArgs),
    /// Start a server on a fresh SQLite file, load it, and print what it achieved.
    Bench(BenchArgs),
    /// Manage devices and their secrets.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Send commands to devices through a running server, and list them.
    #[command(subcommand)]
    Command(CommandCommand),
    /// Make TLS certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Manage operator accounts and their API tokens.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage service accounts: MQTT logins that read the feed of readings.
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Create a service account and print its secret, once.
    Add {
        /// The account's name, its MQTT user name.
        name: String,
        /// A filter it may subscribe to: sensor/#, sensor/+ or sensor/<device id>; repeat for more.
        #[arg(
            long = "subscribe",
            value_name = "FILTER",
            required_unless_present = "publish"
        )]
        subscribe: Vec<String>,
        /// A command topic it may publish tracked commands on: command/+ (every device) or command/<device id>; repeat for more.
        #[arg(long = "publish", value_name = "TOPIC")]
        publish: Vec<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the service accounts with their grants.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a service account; its secret stops working at once.
    Remove {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account; the password is prompted for, or read from stdin.
    Add {
        /// The account name.
        name: String,
        /// Make the account an admin (same as --role admin).
        #[arg(long)]
        admin: bool,
        /// viewer (sees dashboards), operator (also sends commands, manages devices) or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Set an account's password (prompted, or from stdin) and sign it out everywhere.
    Passwd {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete an account with its sessions and tokens.
    Remove {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create an API token for an account and print it, once.
    Token {
        name: String,
        /// What the token is for, such as "backup script".
        #[arg(long, default_value = "cli")]
        label: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// A TOML config file, as for `serve`.
    #[arg(long, env = "SIGHTLINE_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Database URL, as for `serve` [default: sqlite://sightline.db?mode=rwc].
    #[arg(
        long,
        env = "SIGHTLINE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<server::store::DatabaseUrl>,
}

impl DbArgs {
    async fn open(&self) -> anyhow::Result<server::store::Store> {
        let config = ServeArgs {
            config: self.config.clone(),
            overrides: Overrides {
                database_url: self.database_url.clone(),
                ..Overrides::default()
            },
        }
        .resolve()?;
        Ok(server::store::Store::open(config.database_url.expose()).await?)
    }
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Create a device (or give a self-registered one a secret) and print its secret, once.
    Add(DeviceArgs),
    /// Replace a device's secret and print the new one, once.
    Rotate(DeviceArgs),
    /// Refuse a device's logins from now on; its data stays.
    Disable(DeviceArgs),
    /// Accept a disabled device's logins again.
    Enable(DeviceArgs),
}

#[derive(Debug, clap::Args)]
struct DeviceArgs {
    /// The device id, as it appears in `sensor/<id>`.
    id: String,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Subcommand)]
enum CommandCommand {
    /// Send a command and wait for its outcome; exits non-zero unless it
    /// was answered (two-way) or delivered (one-way).
    Send(SendArgs),
    /// List a device's newest commands.
    List {
        /// The device id.
        device: String,
        /// How many commands to list.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, clap::Args)]
struct ServerArg {
    /// The running server's HTTP address.
    #[arg(long, env = "SIGHTLINE_URL", default_value = "http://127.0.0.1:3000")]
    server: String,
    /// An operator's API token (`sightline user token NAME`).
    #[arg(long, env = "SIGHTLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The device id.
    device: String,
    /// The command's name, such as `ping` or `set_interval`.
    name: String,
    /// The params as JSON, such as '{"ms":500}' [default: {}].
    #[arg(default_value = "")]
    params: String,
    /// Do not wait for an answer: complete once the device acknowledges it.
    #[arg(long)]
    one_way: bool,
    /// Wait (up to --ttl) for the device if it is offline.
    #[arg(long)]
    persistent: bool,
    /// Seconds to wait for the answer (or the acknowledgement) once sent.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Seconds a persistent command may wait for its device [default: 1 day].
    #[arg(long)]
    ttl: Option<f64>,
    /// Print the command as accepted and return at once.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Write a self-signed development CA and a server certificate signed by it.
    Dev {
        /// Folder for ca.pem, server.pem and server.key.
        #[arg(long, default_value = "certs")]
        out: std::path::PathBuf,
        /// Host names and IP addresses the server certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hosts: Vec<String>,
    },
}

/// Each scenario is a preset; the other flags override single parts of it.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Which target to measure.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// MQTT QoS level of the publishing devices, 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Publishing devices [scenario default: 1000].
    #[arg(long)]
    devices: Option<usize>,
    /// Messages per second per publishing device, 3 readings each [scenario default].
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Length of the run in seconds [scenario default: 60 for throughput, 30 otherwise].
    #[arg(long)]
    seconds: Option<u64>,
    /// Idle connections held beside the publishing devices [scenario default].
    #[arg(long)]
    idle: Option<usize>,
    /// WebSocket viewers [scenario default].
    #[arg(long)]
    viewers: Option<usize>,
    /// Devices each viewer watches; 0 for all [scenario default].
    #[arg(long)]
    watch: Option<usize>,
    /// Keep the database and the server's log, and print where they are.
    #[arg(long)]
    keep: bool,
    /// Store on this PostgreSQL server, in a fresh database made for the
    /// run and dropped after it (throughput, latency, connections and
    /// viewers scenarios); SQLite when absent.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Run this many instances in cluster mode on the --postgres database
    /// and the --nats-url servers: devices spread over them, and each
    /// viewer watches from another instance than its devices'.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    instances: u64,
    /// The NATS servers of a cluster run (--instances above 1).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    nats_url: Vec<String>,
    /// Viewers connect through nginx, configured from this template
    /// (deploy/nginx.conf) with the instances as its servers.
    #[arg(long, value_name = "TEMPLATE")]
    through_nginx: Option<std::path::PathBuf>,
    /// Extra flags for `sightline serve`, after `--`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// The broker's address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: std::net::SocketAddr,
    /// How many devices to connect.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Messages per second per device (each carries 3 readings), 0.001 to 10000.
    #[arg(long, default_value_t = 1.0, value_parser = parse_rate)]
    rate: f64,
    /// Stop after this many seconds; run until Ctrl-C if omitted.
    #[arg(long)]
    seconds: Option<u64>,
    /// Prefix of the device ids.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// MQTT QoS level, 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark prints a report; the server it starts logs to its own
    // file, so the bench itself only needs warnings.
    let quiet = matches!(cli.command, Action::Bench(_));
    let default = if quiet { "warn" } else { "info,rumqttd=off" };
    let filter = cli.log.as_deref().unwrap_or(default);
    // Tools that print data (a secret, a token) keep stdout for it alone.
    let writer = match cli.command {
        Action::Serve(_) | Action::Simulate(_) => BoxMakeWriter::new(std::io::stdout),
        _ => BoxMakeWriter::new(std::io::stderr),
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(writer)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Action) -> anyhow::Result<()> {
    match command {
        Action::Serve(args) => serve(*args).await,
        Action::Simulate(args) => simulate(args).await,
        Action::Bench(args) => {
            let exe = std::env::current_exe().context("cannot find the sightline binary")?;
            print!("{}", bench::report(&args.options(exe)).await?);
            Ok(())
        }
        Action::Device(command) => {
            let (action, args) = command.split();
            let store = args.db.open().await?;
            Ok(server::store::registry::cli(&store, action, &args.id).await?)
        }
        Action::Service(command) => {
            use server::store::services::{cli, ServiceCli};
            let (action, db) = match command {
                ServiceCommand::Add {
                    name,
                    subscribe,
                    publish,
                    db,
                } => {
                    let grants = server::store::services::Grants { subscribe, publish };
                    (ServiceCli::Add { name, grants }, db)
                }
                ServiceCommand::List { db } => (ServiceCli::List, db),
                ServiceCommand::Remove { name, db } => (ServiceCli::Remove { name }, db),
            };
            let store = db.open().await?;
            Ok(cli(&store, action).await?)
        }
        Action::Command(CommandCommand::List {
            device,
            limit,
            server,
        }) => {
            Ok(
                server::command::cli::list(&server.server, server.token.as_deref(), &device, limit)
                    .await?,
            )
        }
        Action::Command(CommandCommand::Send(args)) => {
            let request = app::model::CommandRequest {
                name: args.name,
                params: server::command::cli::params(&args.params)?,
                two_way: !args.one_way,
                persistent: args.persistent,
                timeout_ms: Some((args.timeout * 1000.0).round() as i64),
                ttl_ms: args.ttl.map(|s| (s * 1000.0).round() as i64),
            };
            let server = &args.server;
            server::command::cli::send(
                &server.server,
                server.token.as_deref(),
                &args.device,
                &request,
                !args.no_wait,
            )
            .await
        }
        Action::User(command) => {
            let (action, db) = command.split()?;
            let store = db.open().await?;
            let idle = server::config::Config::default().session_idle_minutes;
            server::auth::cli::run(store, action, idle).await
        }
        Action::Cert(CertCommand::Dev { out, hosts }) => {
            println!("{}", server::edge::tls::write_dev_cert(&out, &hosts)?);
            Ok(())
        }
    }
}

impl DeviceCommand {
    fn split(self) -> (DeviceAction, DeviceArgs) {
        match self {
            Self::Add(args) => (DeviceAction::Add, args),
            Self::Rotate(args) => (DeviceAction::Rotate, args),
            Self::Disable(args) => (DeviceAction::Disable, args),
            Self::Enable(args) => (DeviceAction::Enable, args),
        }
    }
}

impl UserCommand {
    fn split(self) -> anyhow::Result<(UserAction, DbArgs)> {
        Ok(match self {
            Self::Add {
                name,
                admin,
                role,
                db,
            } => {
                let role = if admin {
                    app::model::Role::Admin
                } else {
                    app::model::Role::parse(&role).with_context(|| {
                        format!("unknown role {role:?}: use viewer, operator or admin")
                    })?
                };
                (UserAction::Add { name, role }, db)
            }
            Self::Passwd { name, db } => (UserAction::Passwd { name }, db),
            Self::Remove { name, db } => (UserAction::Remove { name }, db),
            Self::List { db } => (UserAction::List, db),
            Self::Token { name, label, db } => (UserAction::Token { name, label }, db),
        })
    }
}

impl BenchArgs {
    /// The scenario's preset, with what the flags override.
    fn options(self, exe: std::path::PathBuf) -> BenchOptions {
        let mut opts = BenchOptions::preset(self.scenario, exe);
        opts.qos = qos(self.qos);
        opts.devices = self.devices.unwrap_or(opts.devices);
        opts.rate = self.rate.unwrap_or(opts.rate);
        opts.seconds = self.seconds.unwrap_or(opts.seconds);
        opts.idle = self.idle.unwrap_or(opts.idle);
        opts.viewers = self.viewers.unwrap_or(opts.viewers);
        opts.watch = self.watch.unwrap_or(opts.watch);
        opts.serve_args = self.serve_args;
        opts.keep = self.keep;
        opts.postgres = self.postgres;
        opts.instances = usize::try_from(self.instances).unwrap_or(1);
        opts.nats = self.nats_url;
        opts.nginx = self.through_nginx;
        opts
    }
}

fn qos(level: u8) -> rumqttc::QoS {
    if level == 1 {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    tracing::debug!(?config, "configuration");
    let listeners = Listeners::bind(&config).await?;
    server::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let qos = qos(args.qos);
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let report = simulate::run(
        SimOptions {
            broker: args.broker,
            spread: Vec::new(),
            devices: args.devices,
            rate: args.rate,
            prefix: args.prefix,
            qos,
            duration: args.seconds.map(Duration::from_secs),
            backfill: None,
            stamp: None,
            answer_commands: true,
        },
        cancel,
    )
    .await;
    println!(
        "simulated {} devices: {} messages, {} readings in {:.1} s ({:.0} readings/s sent)",
        args.devices,
        report.messages,
        report.readings,
        report.elapsed.as_secs_f64(),
        report.readings_per_sec()
    );
    Ok(())
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.001..=10_000.0).contains(&r) => Ok(r),
        _ => Err("expected a number from 0.001 to 10000".into()),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
