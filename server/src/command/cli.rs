//! `sightline command`: sends a command through a running server's API and
//! follows it to the end, so a script can rely on the exit status.

use std::time::Duration;

use app::model::{Command, CommandRequest, CommandState};

/// Why the CLI could not send or follow a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Params(String),
}

/// How often a waiting CLI asks for the command's state.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// A client of one server's command API.
#[derive(Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the server's HTTP address, such as `http://127.0.0.1:3000`;
    /// `token` an operator's API token (`sightline user token`).
    pub fn new(base: &str, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) =
            token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Sends `request` to `device`. With `wait`, follows it until it is
    /// final (answered, failed, expired, or a delivered one-way command).
    pub async fn send(
        &self,
        device: &str,
        request: &CommandRequest,
        wait: bool,
    ) -> Result<Command, CliError> {
        let url = format!("{}/api/devices/{device}/commands", self.base);
        let mut command: Command = self.json(self.http.post(&url).json(request), &url).await?;
        if !wait {
            return Ok(command);
        }
        let url = format!("{}/api/commands/{}", self.base, command.id);
        while !command.is_final() && command.state != CommandState::Queued {
            tokio::time::sleep(POLL_EVERY).await;
            command = self.json(self.http.get(&url), &url).await?;
        }
        Ok(command)
    }

    /// A device's newest commands, newest first.
    pub async fn list(&self, device: &str, limit: u64) -> Result<Vec<Command>, CliError> {
        let url = format!("{}/api/devices/{device}/commands?limit={limit}", self.base);
        self.json(self.http.get(&url), &url).await
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, CliError> {
        let unreachable = |source| CliError::Unreachable {
            url: url.to_owned(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            return Err(CliError::Refused(format!("{status}: {why}")));
        }
        response.json().await.map_err(unreachable)
    }
}

/// Parses params typed on the command line; empty means `{}`.
pub fn params(text: &str) -> Result<serde_json::Value, CliError> {
    app::model::parse_params(text).map_err(CliError::Params)
}

/// One line per command, for people: state, name, age and outcome.
pub fn describe(c: &Command) -> String {
    let outcome = match (&c.response, &c.error) {
        (Some(r), _) => format!(" -> {r}"),
        (None, Some(e)) => format!(" ({e})"),
        _ => String::new(),
    };
    let took = match (c.completed_at, c.sent_at) {
        (Some(done), Some(sent)) => format!(" in {} ms", done - sent),
        _ => String::new(),
    };
    format!(
        "{} {:<9} {} {}{took}{outcome}",
        c.id,
        c.state.label(),
        c.name,
        c.params
    )
}

/// `sightline command list`: prints a device's newest commands.
pub async fn list(
    server: &str,
    token: Option<&str>,
    device: &str,
    limit: u64,
) -> Result<(), CliError> {
    for c in Client::new(server, token).list(device, limit).await? {
        println!("{}", describe(&c));
    }
    Ok(())
}

/// `sightline command send`: sends `request`, prints the command as it
/// ended (or as accepted, without `wait`), and fails unless it succeeded.
pub async fn send(
    server: &str,
    token: Option<&str>,
    device: &str,
    request: &CommandRequest,
    wait: bool,
) -> anyhow::Result<()> {
    let c = Client::new(server, token)
        .send(device, request, wait)
        .await?;
    println!("{}", describe(&c));
    let ok = match c.state {
        CommandState::Answered => true,
        CommandState::Delivered => !c.two_way,
        CommandState::Failed | CommandState::Expired => false,
        // Not waited for, or waiting for an offline device.
        _ => true,
    };
    anyhow::ensure!(ok, "command {} {}", c.id, c.state.label());
    Ok(())
}
