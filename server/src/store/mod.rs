//! Storage: the only module that talks to the database. It opens SQLite or
//! PostgreSQL through sea-orm, runs the migrations, writes readings in
//! batched transactions and answers the pages' and API's queries.

pub mod accounts;
pub mod commands;
pub mod desired;
mod entity;
pub mod leader;
pub mod queue;
pub mod registry;
pub mod retention;
pub mod rollup;
pub mod scratch;
pub mod services;
pub mod sessions;
mod url;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use app::model::{DeviceSummary, LatestValue, MetricSeries, Sparkline, SPARKLINE_MS};
use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};

use entity::{device, reading, series};
pub use url::{redact_url, DatabaseUrl};

/// The most points one metric's history returns; the newest are kept. This
/// bounds a page load even for a device publishing far faster than 1 Hz.
pub const MAX_HISTORY_POINTS: u64 = app::api::MAX_SERIES_POINTS as u64;

/// Prepared statements cached per reader connection.
const STATEMENT_CACHE: usize = 16;

/// Prepared statements cached on the writer's connection: its five reading
/// INSERTs and four upserts per rollup level, with room for registrations.
const WRITER_STATEMENT_CACHE: usize = 32;

/// How storage could fail.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open database {url}: {source} (change --database-url or SIGHTLINE_DATABASE_URL)"
    )]
    Open { url: String, source: DbErr },
    #[error("cannot migrate database {url}: {source}")]
    Migrate { url: String, source: DbErr },
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// From the PostgreSQL paths that sea-orm has no statement for.
    #[error("database error: {0}")]
    Sqlx(#[from] sea_orm::sqlx::Error),
}

/// A handle to the database. Cloning it is cheap and shares the pool.
#[derive(Clone, Debug)]
pub struct Store {
    /// The pool that pages and the API read through.
    db: DatabaseConnection,
    /// One connection reserved for the batch writer, so page loads never
    /// wait behind a large transaction for a pool slot, and so only the
    /// writer pays for a large page cache.
    writer_db: DatabaseConnection,
    /// Devices deleted since start, here or (in cluster mode) elsewhere;
    /// the writer empties its id caches when it changes.
    deletions: Arc<AtomicU64>,
}

/// Which of the two connection pools a connection is for; SQLite tuning
/// differs between them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pool {
    Readers,
    Writer,
}

/// The writer's SQLite page cache, in KiB. Readings are indexed by
/// `(series_id, ts)`, so a batch appends to one index leaf per series: with
/// thousands of series a batch dirties thousands of pages. With SQLite's
/// default 2 MiB cache each batch re-read those pages through the kernel,
/// which cost more than the inserts themselves (see BENCHMARKS.md).
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Each reader connection's SQLite page cache, in KiB. The bundled SQLite
/// is built with `SQLITE_ENABLE_MEMORY_MANAGEMENT`, which pools every
/// connection's page cache into one: the pool may hold as many pages as all
/// connections' budgets together (the writer's [`WRITER_CACHE_KIB`] plus
/// eight of these, 80 MiB), and any connection may use them. So the first
/// large read (a 1M-row export, say) grows the server by up to that much,
/// and later reads recycle those pages: memory is bounded by configuration,
/// not by the size of a query. See `a_million_row_export_runs_in_flat_server_memory`.
const READER_CACHE_KIB: i64 = 2 * 1024;

/// Pages of WAL after which the writer itself checkpoints. The default
/// (1,000 pages, 4 MiB) checkpointed after nearly every large batch,
/// copying the same hot index pages again and again inside the writer's
/// commits. The background checkpoint ([`Store::checkpoints`]) does the
/// copying now; the writer's pass only finishes it and lets SQLite start the
/// log over, so the rarer it is the better: 256 MiB is one pass every few
/// seconds at 150,000 readings/s. This also bounds the WAL file's size.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 64 * 1024;

/// How often the background checkpoint runs; see [`Store::checkpoints`].
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// When SQLite makes a commit durable, and so what a PUBACK promises.
/// `Normal` is the default because `Full` doubled the median
/// publish-to-screen latency on the project's machines (an fsync per
/// small commit), far over the 10 % it could cost; see BENCHMARKS.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced before it returns, so
    /// an acknowledged reading survives power loss and an OS crash.
    /// Throughput is unchanged (commits are batched); latency is not.
    Full,
    /// `synchronous=NORMAL`: WAL commits reach the OS at once and the disk
    /// at checkpoints, so an acknowledged reading survives the process
    /// being killed, but the last moments before power loss or an OS crash
    /// may be lost.
    #[default]
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => Err(format!("unknown sync mode {s:?}: use full or normal")),
        }
    }
}

async fn connect(
    url: &str,
    pool: Pool,
    durability: Durability,
) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    let (connections, statements) = match pool {
        Pool::Writer => (1, WRITER_STATEMENT_CACHE),
        Pool::Readers => (8, STATEMENT_CACHE),
    };
    options
        // sea-orm limits SQLite to one connection unless told otherwise;
        // WAL lets page reads run beside the writer.
        .max_connections(connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o: SqliteConnectOptions| {
            // WAL lets readers proceed during a write transaction; how
            // durable a commit is, is the operator's choice (`--sync`).
            // busy_timeout covers the moments when two connections want
            // the write lock.
            let synchronous = match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            };
            let o = o
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // A prepared multi-row INSERT with thousands of parameters
                // is large, and device registration prepares one per chunk
                // size; sqlx's default of 100 cached statements per
                // connection held hundreds of megabytes. The writer's five
                // reading INSERTs fit well within 16.
                .statement_cache_capacity(statements);
            match pool {
                Pool::Readers => o.pragma("cache_size", (-READER_CACHE_KIB).to_string()),
                // The writer only ever inserts readings under series ids it
                // has just created or read back, so checking the foreign
                // key of every row would be pure cost; deletes run on
                // reader connections, where cascades stay enforced.
                Pool::Writer => o
                    .foreign_keys(false)
                    .pragma("cache_size", (-WRITER_CACHE_KIB).to_string())
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
                    .pragma("temp_store", "memory"),
            }
        })
        .map_sqlx_postgres_opts(move |o: PgConnectOptions| o.statement_cache_capacity(statements));
    Database::connect(options).await
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, Durability::default()).await
    }

    /// Connects with SQLite commits as durable as `durability` says (on
    /// PostgreSQL, the server's own `synchronous_commit` decides).
    pub async fn open_with(url: &str, durability: Durability) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let db = connect(url, Pool::Readers, durability)
            .await
            .map_err(|source| StoreError::Open {
                url: shown.clone(),
                source,
            })?;
        // Instances starting together on one PostgreSQL database would race
        // to create the same tables; an advisory lock lets one migrate while
        // the others wait, then find nothing left to do.
        let lock = leader::lock_for_migrations(&db).await?;
        let migrated = Migrator::up(&db, None).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        migrated.map_err(|source| StoreError::Migrate {
            url: shown.clone(),
            source,
        })?;
        let writer_db = connect(url, Pool::Writer, durability)
            .await
            .map_err(|source| StoreError::Open { url: shown, source })?;
        Ok(Self {
            db,
            writer_db,
            deletions: Arc::default(),
        })
    }

    /// The writer, on its own connection and with its own id caches. There
    /// must be only one at a time.
    pub fn writer(&self) -> writer::Writer {
        writer::Writer::new(self.writer_db.clone(), self.deletions.clone())
    }

    /// Copies SQLite's write-ahead log back into the database every
    /// [`CHECKPOINT_EVERY`] until `stop` fires, on a reader connection so
    /// that the work runs beside the writer instead of inside one of its
    /// commits. Without it, the writer's own checkpoint stalled a commit for
    /// 50-100 ms every second or two at 10,000 readings/s, which is what the
    /// slowest live updates waited for. The writer still checkpoints when
    /// the log passes [`WAL_AUTOCHECKPOINT_PAGES`]; by then almost every
    /// page has been copied here, so that pass is short, and it is what
    /// lets SQLite start the log file over. Does nothing on PostgreSQL.
    pub async fn checkpoints(&self, stop: tokio_util::sync::CancellationToken) {
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
            return;
        }
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self
                .db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                tracing::warn!("background checkpoint failed: {e}");
            }
        }
    }

    /// Every device with its latest value per metric, ordered by id.
    /// Rejection counts are left at zero for the caller to fill in.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let devices = device::Entity::find()
            .filter(device::Column::RemovedAt.is_null())
            .order_by_asc(device::Column::Name)
            .all(&self.db)
            .await?;
        let backend = self.db.get_database_backend();
        let mut latest: HashMap<i64, Vec<LatestValue>> = HashMap::new();
        for row in LatestRow::find_by_statement(Statement::from_string(backend, LATEST_SQL))
            .all(&self.db)
            .await?
        {
            latest.entry(row.device_id).or_default().push(LatestValue {
                metric: row.metric,
                ts: row.ts,
                value: row.value,
            });
        }
        let mut sparklines = self.sparklines().await?;
        Ok(devices
            .into_iter()
            .map(|d| {
                let values = latest.remove(&d.id).unwrap_or_default();
                let sparkline = sparklines.remove(&d.id);
                DeviceSummary {
                    sparkline,
                    ..summary(d, values)
                }
            })
            .collect())
    }

    /// The last hour of every device's first metric (by name), averaged
    /// over two-minute slots from the 1-minute rollups: one index range per
    /// series, and about 30 rows per device.
    async fn sparklines(&self) -> Result<HashMap<i64, Sparkline>, StoreError> {
        let backend = self.db.get_database_backend();
        let since = rollup::bucket_of(crate::clock::now_ms() - SPARKLINE_MS, SPARK_SLOT_MS);
        // The cut-off appears three times: PostgreSQL reuses `$1`, while
        // SQLite's `?` takes one bound value per mark (a missing one would
        // silently be NULL and match nothing).
        let (p, bound) = match backend {
            sea_orm::DatabaseBackend::Postgres => ("$1", 1),
            _ => ("?", 3),
        };
        let sql = format!(
            "SELECT s.device_id AS device_id, s.metric AS metric, \
                    CAST({since} + ((r.bucket - {since}) / {slot}) * {slot} AS BIGINT) AS slot, \
                    SUM(r.total) / SUM(r.n) AS value \
             FROM series s JOIN rollup_1m r ON r.series_id = s.id \
             WHERE r.bucket >= {since} AND s.metric = \
               (SELECT MIN(s2.metric) FROM series s2 WHERE s2.device_id = s.device_id) \
             GROUP BY s.device_id, s.metric, slot ORDER BY s.device_id, slot",
            since = p,
            slot = SPARK_SLOT_MS,
        );
        let rows = SparkRow::find_by_statement(Statement::from_sql_and_values(
            backend,
            sql,
            vec![sea_orm::Value::BigInt(Some(since)); bound],
        ))
        .all(&self.db)
        .await?;
        let mut out: HashMap<i64, Sparkline> = HashMap::new();
        for row in rows {
            out.entry(row.device_id)
                .or_insert_with(|| Sparkline {
                    metric: row.metric.clone(),
                    points: Vec::new(),
                })
                .points
                .push((row.slot, row.value));
        }
        Ok(out)
    }

    /// One device with every metric's readings since `from`, or `None` if
    /// the device has never reported.
    pub async fn device(
        &self,
        name: &str,
        from: i64,
    ) -> Result<Option<(DeviceSummary, Vec<MetricSeries>)>, StoreError> {
        let Some(d) = registry::find(&self.db, name)
            .await?
            .filter(|d| d.removed_at.is_none())
        else {
            return Ok(None);
        };
        let all_series = series::Entity::find()
            .filter(series::Column::DeviceId.eq(d.id))
            .order_by_asc(series::Column::Metric)
            .all(&self.db)
            .await?;
        let mut history = Vec::with_capacity(all_series.len());
        let mut values = Vec::with_capacity(all_series.len());
        for s in all_series {
            let newest_first = |q: sea_orm::Select<reading::Entity>| {
                q.select_only()
                    .column(reading::Column::Ts)
                    .column(reading::Column::Value)
                    .filter(reading::Column::SeriesId.eq(s.id))
                    .order_by_desc(reading::Column::Ts)
                    .order_by_desc(reading::Column::Id)
            };
            let mut points: Vec<(i64, f64)> =
                newest_first(reading::Entity::find().filter(reading::Column::Ts.gte(from)))
                    .limit(MAX_HISTORY_POINTS)
                    .into_tuple()
                    .all(&self.db)
                    .await?;
            // The latest value may be older than the window.
            let newest = match points.first() {
                Some(p) => Some(*p),
                None => {
                    newest_first(reading::Entity::find())
                        .into_tuple::<(i64, f64)>()
                        .one(&self.db)
                        .await?
                }
            };
            points.reverse();
            if let Some((ts, value)) = newest {
                values.push(LatestValue {
                    metric: s.metric.clone(),
                    ts,
                    value,
                });
            }
            history.push(MetricSeries {
                metric: s.metric,
                points,
            });
        }
        Ok(Some((summary(d, values), history)))
    }

    /// Stores a command as it is now; false if its device does not exist.
    pub async fn save_command(&self, command: &app::model::Command) -> Result<bool, StoreError> {
        commands::save(&self.db, command).await
    }

    /// A device's newest commands, newest first.
    pub async fn recent_commands(
        &self,
        device: &str,
        limit: u64,
    ) -> Result<Vec<app::model::Command>, StoreError> {
        commands::recent(&self.db, device, limit).await
    }

    /// One command by id.
    pub async fn command(&self, id: &str) -> Result<Option<app::model::Command>, StoreError> {
        commands::get(&self.db, id).await
    }

    /// Commands that were not finished when the server last stopped.
    pub async fn unfinished_commands(&self) -> Result<Vec<app::model::Command>, StoreError> {
        commands::unfinished(&self.db, None).await
    }

    /// One device's unfinished commands, oldest first.
    pub async fn unfinished_commands_of(
        &self,
        device: &str,
    ) -> Result<Vec<app::model::Command>, StoreError> {
        commands::unfinished(&self.db, Some(device)).await
    }

    /// Writes a command's new state if its stored state is still `was`;
    /// see [`commands::replace_if`].
    pub async fn replace_command_if(
        &self,
        command: &app::model::Command,
        was: app::model::CommandState,
    ) -> Result<bool, StoreError> {
        commands::replace_if(&self.db, command, was).await
    }

    /// A device's desired state, if an operator set one.
    pub async fn desired(
        &self,
        device: &str,
    ) -> Result<Option<app::model::DesiredState>, StoreError> {
        desired::get(&self.db, device).await
    }

    /// Sets a device's desired state; `None` if the device does not exist.
    /// See [`desired::set`].
    pub async fn set_desired(
        &self,
        device: &str,
        payload: &str,
        by: &str,
        at: i64,
    ) -> Result<Option<app::model::DesiredState>, StoreError> {
        desired::set(&self.db, device, payload, by, at).await
    }

    /// Removes a device's desired state; false if it had none.
    pub async fn clear_desired(&self, device: &str, at: i64) -> Result<bool, StoreError> {
        desired::clear(&self.db, device, at).await
    }

    /// Records the device's acknowledgement of a desired state's version.
    pub async fn acknowledge_desired(
        &self,
        device: &str,
        version: i64,
        at: i64,
    ) -> Result<bool, StoreError> {
        desired::acknowledge(&self.db, device, version, at).await
    }

    /// The stored MQTT session a new connection of `client_id` of
    /// `device` resumes, if any; see [`sessions::take`].
    pub async fn take_session(
        &self,
        device: &str,
        client_id: &str,
        now: i64,
        resume: bool,
    ) -> Result<Option<sessions::SessionState>, StoreError> {
        sessions::take(&self.db, device, client_id, now, resume).await
    }

    /// Marks a persistent MQTT session connected and held by `owner`; see
    /// [`sessions::open`].
    pub async fn open_session(
        &self,
        device: &str,
        client_id: &str,
        expiry_and_owner: (u32, i64),
        resumed: bool,
        max_per_device: usize,
    ) -> Result<usize, StoreError> {
        sessions::open(
            &self.db,
            device,
            client_id,
            expiry_and_owner,
            resumed,
            max_per_device,
        )
        .await
    }

    /// Writes a persistent MQTT session's state; see [`sessions::save`].
    pub async fn save_session(
        &self,
        device: &str,
        client_id: &str,
        state: &sessions::SessionState,
        owner: Option<i64>,
        ended_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sessions::save(&self.db, device, client_id, state, owner, ended_at).await
    }

    /// Forgets an MQTT session (if `owner` still holds it, when given).
    pub async fn discard_session(
        &self,
        device: &str,
        client_id: &str,
        owner: Option<i64>,
    ) -> Result<(), StoreError> {
        sessions::discard(&self.db, device, client_id, owner).await
    }

    /// Whether a persistent MQTT session of `device` keeps its commands;
    /// see [`sessions::keeps_commands`].
    pub async fn session_keeps_commands(&self, device: &str, now: i64) -> Result<bool, StoreError> {
        sessions::keeps_commands(&self.db, device, now).await
    }

    /// Deletes expired MQTT sessions, and on a single server (`restarted`)
    /// ends those the last run left marked connected.
    pub async fn tidy_sessions(&self, now: i64, restarted: bool) -> Result<u64, StoreError> {
        if restarted {
            sessions::end_all(&self.db, now).await?;
        }
        sessions::purge(&self.db, now).await
    }

    /// Commands waiting (queued) for `device`.
    pub async fn waiting_commands(&self, device: &str) -> Result<usize, StoreError> {
        commands::waiting(&self.db, device).await
    }

    /// Makes a service account; see [`services::add`].
    pub async fn add_service_account(
        &self,
        name: &str,
        grants: &services::Grants,
        by: &str,
        at: i64,
    ) -> Result<app::model::CreatedServiceAccount, services::ServiceError> {
        services::add(&self.db, name, grants, by, at).await
    }

    /// Every service account, by name.
    pub async fn service_accounts(&self) -> Result<Vec<app::model::ServiceAccount>, StoreError> {
        services::list(&self.db).await
    }

    /// One service account, if it exists.
    pub async fn service_account(
        &self,
        name: &str,
    ) -> Result<Option<app::model::ServiceAccount>, StoreError> {
        services::get(&self.db, name).await
    }

    /// Removes a service account.
    pub async fn remove_service_account(&self, name: &str) -> Result<(), services::ServiceError> {
        services::remove(&self.db, name).await
    }

    /// The service account these credentials log in as, if any.
    pub async fn service_login(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<app::model::ServiceAccount>, StoreError> {
        services::login(&self.db, name, password).await
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(registry::find(&self.db, name).await?.is_some())
    }

    /// Creates a device with a new secret; see [`registry::add`].
    pub async fn add_device(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<registry::NewDevice, registry::RegistryError> {
        registry::add(&self.db, id, now_ms).await
    }

    /// Gives a device a new secret; see [`registry::rotate`].
    pub async fn rotate_secret(
        &self,
        id: &str,
    ) -> Result<registry::NewDevice, registry::RegistryError> {
        registry::rotate(&self.db, id).await
    }

    /// Deletes a device, with its readings or keeping them; see
    /// [`registry::delete`].
    pub async fn delete_device(
        &self,
        id: &str,
        keep_data: bool,
        now_ms: i64,
    ) -> Result<(), registry::RegistryError> {
        registry::delete(&self.db, id, keep_data, now_ms).await?;
        self.forget_devices();
        Ok(())
    }

    /// Tells the writer that a device was deleted (here, or by another
    /// instance), so it looks ids up again.
    pub fn forget_devices(&self) {
        self.deletions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Enables or disables a device; see [`registry::set_disabled`].
    pub async fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
    ) -> Result<(), registry::RegistryError> {
        registry::set_disabled(&self.db, id, disabled).await
    }

    /// Checks a device's login; see [`registry::login`].
    pub async fn login(
        &self,
        user: &str,
        password: Option<&str>,
    ) -> Result<registry::Login, StoreError> {
        registry::login(&self.db, user, password).await
    }

    /// Whether a device name is protected by a secret; see
    /// [`registry::is_secured`].
    pub async fn is_secured(&self, id: &str) -> Result<bool, StoreError> {
        registry::is_secured(&self.db, id).await
    }

    /// Every series as `(device name, metric)`, for ingest to hold each
    /// device to its series limit from the first reading after a start.
    pub async fn all_series(&self) -> Result<Vec<(String, String)>, StoreError> {
        let names: HashMap<i64, String> = device::Entity::find()
            .select_only()
            .column(device::Column::Id)
            .column(device::Column::Name)
            .into_tuple::<(i64, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let series: Vec<(i64, String)> = series::Entity::find()
            .select_only()
            .column(series::Column::DeviceId)
            .column(series::Column::Metric)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(series
            .into_iter()
            .filter_map(|(device, metric)| Some((names.get(&device)?.clone(), metric)))
            .collect())
    }

    /// The series of device `name` as `(series id, metric)`, only `metric`
    /// if given, ordered by metric; `None` if the device is unknown.
    pub async fn series_of(
        &self,
        name: &str,
        metric: Option<&str>,
    ) -> Result<Option<Vec<(i64, String)>>, StoreError> {
        let Some(d) = registry::find(&self.db, name).await? else {
            return Ok(None);
        };
        let mut query = series::Entity::find()
            .select_only()
            .column(series::Column::Id)
            .column(series::Column::Metric)
            .filter(series::Column::DeviceId.eq(d.id))
            .order_by_asc(series::Column::Metric);
        if let Some(metric) = metric {
            query = query.filter(series::Column::Metric.eq(metric));
        }
        Ok(Some(query.into_tuple().all(&self.db).await?))
    }

    /// Up to `limit` readings of one series with `from <= ts <= to`, in
    /// `(ts, id)` order, after the reading `after` (a `(ts, id)` pair) if
    /// given, as `(ts, id, value)`. Paging by key rather than by offset
    /// keeps every page an index range scan, however deep the export.
    pub async fn readings_page(
        &self,
        series_id: i64,
        from: i64,
        to: i64,
        after: Option<(i64, i64)>,
        limit: u64,
    ) -> Result<Vec<(i64, i64, f64)>, StoreError> {
        use sea_orm::Condition;
        let mut query = reading::Entity::find()
            .select_only()
            .column(reading::Column::Ts)
            .column(reading::Column::Id)
            .column(reading::Column::Value)
            .filter(reading::Column::SeriesId.eq(series_id))
            .filter(reading::Column::Ts.lte(to))
            .order_by_asc(reading::Column::Ts)
            .order_by_asc(reading::Column::Id)
            .limit(limit);
        query = match after {
            None => query.filter(reading::Column::Ts.gte(from)),
            Some((ts, id)) => query.filter(
                Condition::any().add(reading::Column::Ts.gt(ts)).add(
                    Condition::all()
                        .add(reading::Column::Ts.eq(ts))
                        .add(reading::Column::Id.gt(id)),
                ),
            ),
        };
        Ok(query.into_tuple().all(&self.db).await?)
    }

    /// Up to `limit` readings of one series with `from <= ts <= to`, oldest
    /// first, as `(ts, value)`.
    pub async fn raw_points(
        &self,
        series_id: i64,
        from: i64,
        to: i64,
        limit: u64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        Ok(reading::Entity::find()
            .select_only()
            .column(reading::Column::Ts)
            .column(reading::Column::Value)
            .filter(reading::Column::SeriesId.eq(series_id))
            .filter(reading::Column::Ts.gte(from))
            .filter(reading::Column::Ts.lte(to))
            .order_by_asc(reading::Column::Ts)
            .order_by_asc(reading::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Summaries of one series over consecutive buckets; see
    /// [`rollup::aggregate`].
    pub async fn aggregate(
        &self,
        series_id: i64,
        source: rollup::Source,
        bounds: &[i64],
    ) -> Result<Vec<(usize, rollup::Summary)>, StoreError> {
        Ok(rollup::aggregate(&self.db, series_id, source, bounds).await?)
    }

    /// Deletes what `policy` no longer keeps at time `now`; see
    /// [`retention::prune`].
    pub async fn prune(
        &self,
        policy: retention::Policy,
        now: i64,
    ) -> Result<retention::Pruned, StoreError> {
        let stop = tokio_util::sync::CancellationToken::new();
        Ok(retention::prune(&self.db, policy, now, &stop).await?)
    }

    /// Applies `policy` in the background until `stop` fires; see
    /// [`retention::run`].
    pub async fn retention(
        &self,
        policy: retention::Policy,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        retention::run(self.db.clone(), policy, metrics, stop).await;
    }

    /// How many readings are stored in all.
    pub async fn count_readings(&self) -> Result<u64, StoreError> {
        Ok(reading::Entity::find().count(&self.db).await?)
    }
}

/// The mark for the `n`-th bound value (from 1) of a hand-written
/// statement: PostgreSQL numbers them, SQLite takes them in order.
pub(crate) fn placeholder(backend: sea_orm::DatabaseBackend, n: usize) -> String {
    match backend {
        sea_orm::DatabaseBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// The newest reading of every series, found through the `(series_id, ts)`
/// index: one short index probe per series, on SQLite and PostgreSQL alike.
const LATEST_SQL: &str = "SELECT s.device_id, s.metric, r.ts, r.value \
     FROM series s JOIN reading r ON r.id = (\
       SELECT r2.id FROM reading r2 WHERE r2.series_id = s.id \
       ORDER BY r2.ts DESC, r2.id DESC LIMIT 1) \
     ORDER BY s.metric";

/// The width of one sparkline point.
const SPARK_SLOT_MS: i64 = 2 * 60_000;

#[derive(Debug, FromQueryResult)]
struct SparkRow {
    device_id: i64,
    metric: String,
    slot: i64,
    value: f64,
}

#[derive(Debug, FromQueryResult)]
struct LatestRow {
    device_id: i64,
    metric: String,
    ts: i64,
    value: f64,
}

/// "Last seen" is the newest reading of any of the device's metrics.
fn summary(d: device::Model, latest: Vec<LatestValue>) -> DeviceSummary {
    DeviceSummary {
        id: d.name,
        first_seen: d.first_seen,
        last_seen: latest.iter().map(|l| l.ts).max().unwrap_or(d.first_seen),
        latest,
        rejected: 0,
        presence: None,
        sparkline: None,
        label: d.label,
        disabled: d.disabled,
        secured: d.secret_hash.is_some(),
    }
}
