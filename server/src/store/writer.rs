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
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::entity::{device, reading, series};
use super::StoreError;
use crate::live::{Hub, LiveBatch};
use crate::metrics::Metrics;

/// Rows per INSERT statement. Three bound values per row keeps a statement
/// under SQLite's limit of 32,766 parameters.
const ROWS_PER_INSERT: usize = 10_000;

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
    series: HashMap<(i64, String), i64>,
}

impl Writer {
    pub(super) fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            devices: HashMap::new(),
            series: HashMap::new(),
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
            let key = (device_id, r.metric.clone());
            let series_id = match self.series.get(&key).or(new_series.get(&key)) {
                Some(id) => *id,
                None => {
                    let id = ensure_series(&txn, device_id, &r.metric).await?;
                    new_series.insert(key, id);
                    id
                }
            };
            rows.push(reading::ActiveModel {
                id: NotSet,
                series_id: Set(series_id),
                ts: Set(r.ts),
                value: Set(r.value),
            });
        }

        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(ROWS_PER_INSERT));
            reading::Entity::insert_many(std::mem::replace(&mut rows, rest))
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        self.devices.extend(new_devices);
        self.series.extend(new_series);
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
