//! The batch writer: the single task that writes readings. It takes every
//! message waiting in its queue, writes them in one transaction, and only
//! then publishes them to live viewers, so what a browser sees is already
//! durable and a reload shows the same data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::Reading;
use sea_orm::sea_query::OnConflict;
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryTrait,
    Statement, TransactionTrait, Value,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::entity::{device, reading, series};
use super::StoreError;
use crate::live::{Hub, LiveBatch};
use crate::metrics::Metrics;

/// Rows per INSERT statement, largest first. A batch is split into
/// statements of these sizes only, so the database sees five distinct
/// statements, each prepared once and then served from the statement
/// cache, instead of a new multi-thousand-parameter statement to parse for
/// every batch. Three bound values per row keeps the largest under
/// SQLite's limit of 32,766 parameters.
const INSERT_SIZES: [usize; 5] = [4096, 512, 64, 8, 1];

/// The readings of one message, as ingest queues them for the writer.
#[derive(Debug)]
pub struct Arrival {
    /// When ingest received the message.
    pub at: Instant,
    pub readings: Vec<Reading>,
}

/// Writes batches of readings, caching device and series ids so that a
/// steady stream costs one multi-row INSERT per batch and nothing else.
pub struct Writer {
    db: DatabaseConnection,
    devices: HashMap<String, i64>,
    /// Series ids by device id, then metric; two levels so that a lookup
    /// borrows the metric name instead of allocating a key.
    series: HashMap<i64, HashMap<String, i64>>,
    /// The INSERT text for each of [`INSERT_SIZES`], built once by sea-orm.
    insert_sql: Vec<(usize, String)>,
}

impl Writer {
    pub(super) fn new(db: DatabaseConnection) -> Self {
        let backend = db.get_database_backend();
        let insert_sql = INSERT_SIZES
            .iter()
            .map(|&n| {
                let rows = (0..n).map(|_| reading::ActiveModel {
                    id: NotSet,
                    series_id: Set(0),
                    ts: Set(0),
                    value: Set(0.0),
                });
                (n, reading::Entity::insert_many(rows).build(backend).sql)
            })
            .collect();
        Self {
            db,
            devices: HashMap::new(),
            series: HashMap::new(),
            insert_sql,
        }
    }

    /// Writes `batch` in one transaction. Nothing is cached until the commit
    /// succeeds, so a failed batch can simply be retried.
    pub async fn write(&mut self, batch: &[Reading]) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let mut new_devices: HashMap<String, i64> = HashMap::new();
        let mut new_series: HashMap<(i64, String), i64> = HashMap::new();
        let mut rows = Vec::with_capacity(batch.len());

        for r in batch {
            let device_id = match self.devices.get(&r.device).or(new_devices.get(&r.device)) {
                Some(id) => *id,
                None => {
                    let id = ensure_device(&txn, &r.device, r.ts).await?;
                    new_devices.insert(r.device.clone(), id);
                    id
                }
            };
            let cached = self
                .series
                .get(&device_id)
                .and_then(|metrics| metrics.get(&r.metric));
            let series_id = match cached {
                Some(id) => *id,
                None => {
                    let key = (device_id, r.metric.clone());
                    match new_series.get(&key) {
                        Some(id) => *id,
                        None => {
                            let id = ensure_series(&txn, device_id, &r.metric).await?;
                            new_series.insert(key, id);
                            id
                        }
                    }
                }
            };
            rows.push((series_id, r.ts, r.value));
        }

        // Insert in index order. Each series appends to its own leaf of the
        // `(series_id, ts)` index, so an unsorted batch hops between
        // thousands of pages; sorted, consecutive rows land on the same
        // page while it is hot in the CPU cache.
        rows.sort_unstable_by_key(|&(series, ts, _)| (series, ts));
        let backend = self.db.get_database_backend();
        let mut rest = rows.as_slice();
        for (size, sql) in &self.insert_sql {
            while rest.len() >= *size {
                let (chunk, tail) = rest.split_at(*size);
                rest = tail;
                let mut values = Vec::with_capacity(chunk.len() * 3);
                for &(series_id, ts, value) in chunk {
                    values.push(Value::BigInt(Some(series_id)));
                    values.push(Value::BigInt(Some(ts)));
                    values.push(Value::Double(Some(value)));
                }
                txn.execute_raw(Statement::from_sql_and_values(backend, sql.clone(), values))
                    .await?;
            }
        }
        txn.commit().await?;
        self.devices.extend(new_devices);
        for ((device_id, metric), id) in new_series {
            self.series.entry(device_id).or_default().insert(metric, id);
        }
        Ok(())
    }
}

/// Registers a device on its first message; returns its id either way.
async fn ensure_device<C: sea_orm::ConnectionTrait>(
    db: &C,
    name: &str,
    ts: i64,
) -> Result<i64, DbErr> {
    device::Entity::insert(device::ActiveModel {
        id: NotSet,
        name: Set(name.to_owned()),
        first_seen: Set(ts),
    })
    .on_conflict(
        OnConflict::column(device::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    device::Entity::find()
        .filter(device::Column::Name.eq(name))
        .one(db)
        .await?
        .map(|d| d.id)
        .ok_or_else(|| DbErr::RecordNotFound(format!("device {name}")))
}

/// Creates the series of a device's metric on first sight.
async fn ensure_series<C: sea_orm::ConnectionTrait>(
    db: &C,
    device_id: i64,
    metric: &str,
) -> Result<i64, DbErr> {
    series::Entity::insert(series::ActiveModel {
        id: NotSet,
        device_id: Set(device_id),
        metric: Set(metric.to_owned()),
    })
    .on_conflict(
        OnConflict::columns([series::Column::DeviceId, series::Column::Metric])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    series::Entity::find()
        .filter(series::Column::DeviceId.eq(device_id))
        .filter(series::Column::Metric.eq(metric))
        .one(db)
        .await?
        .map(|s| s.id)
        .ok_or_else(|| DbErr::RecordNotFound(format!("series {metric}")))
}

/// How the writer sizes and spaces its transactions.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// The most readings per transaction.
    pub batch_max: usize,
    /// A wait after each transaction; zero except in tests.
    pub pause: Duration,
}

/// Runs the writer until the queue is closed and drained. A batch that
/// fails is retried with backoff, so a database outage costs queue space
/// (and, once the queue is full, counted drops) rather than data in hand.
/// Only once `give_up` fires (a shutdown that cannot wait any longer) is a
/// failing batch counted as dropped instead of retried.
pub async fn run(
    mut writer: Writer,
    mut queue: mpsc::Receiver<Arrival>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    pace: Pace,
    give_up: CancellationToken,
) {
    while let Some(first) = queue.recv().await {
        // Take whatever else is already waiting: under load batches grow by
        // themselves, which is what keeps the per-reading cost low, while a
        // lone message is written at once, which keeps latency low.
        let received_at = first.at;
        let mut batch = first.readings;
        while batch.len() < pace.batch_max {
            match queue.try_recv() {
                Ok(mut more) => batch.append(&mut more.readings),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        let started = Instant::now();
        let stored = loop {
            match writer.write(&batch).await {
                Ok(()) => break true,
                Err(e) if give_up.is_cancelled() => {
                    tracing::error!("dropping {} readings at shutdown: {e}", batch.len());
                    break false;
                }
                Err(e) => {
                    tracing::error!(
                        "cannot store {} readings, retrying in {delay:?}: {e}",
                        batch.len()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = give_up.cancelled() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if !stored {
            Metrics::add(&metrics.dropped, batch.len() as u64);
            continue;
        }
        metrics.write_seconds.observe_duration(started.elapsed(), 1);
        metrics.write_batch.observe(batch.len() as u64);
        Metrics::add(&metrics.stored, batch.len() as u64);
        hub.publish(&LiveBatch {
            readings: batch,
            received_at,
        });
        if !pace.pause.is_zero() {
            tokio::time::sleep(pace.pause).await;
        }
    }
}
