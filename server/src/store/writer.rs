//! The batch writer: the single task that writes readings. It takes every
//! message waiting in its queue, writes them in one transaction, and only
//! then acknowledges them to devices and hands them on (to live viewers,
//! as `lib` wires it), so what a browser sees is already durable and a
//! reload shows the same data.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::Reading;
use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::PgPool;
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QuerySelect, QueryTrait, Statement, TransactionTrait, Value,
};
use tokio_util::sync::CancellationToken;

use super::entity::{device, reading, series};
use super::queue::{Committed, QueueRx};
use super::{placeholder, rollup, StoreError};
use crate::metrics::Metrics;

/// Rows per INSERT statement, largest first. A batch is split into
/// statements of these sizes only, so the database sees five distinct
/// statements, each prepared once and then served from the statement
/// cache, instead of a new multi-thousand-parameter statement to parse for
/// every batch. Three bound values per row keeps the largest under
/// SQLite's limit of 32,766 parameters.
const INSERT_SIZES: [usize; 5] = [4096, 512, 64, 8, 1];

/// Writes batches of readings, caching device and series ids so that a
/// steady stream costs one multi-row INSERT per batch and nothing else.
pub struct Writer {
    db: DatabaseConnection,
    /// On PostgreSQL, the writer's pool as sqlx sees it: readings go in
    /// by `COPY`, which sea-orm has no statement for.
    pg: Option<PgPool>,
    devices: HashMap<String, i64>,
    /// Series ids by device id, then metric; two levels so that a lookup
    /// borrows the metric name instead of allocating a key.
    series: HashMap<i64, HashMap<String, i64>>,
    /// The INSERT text for each of [`INSERT_SIZES`], built once by sea-orm.
    insert_sql: Vec<(usize, String)>,
    /// For each rollup level, the upsert text for each of
    /// [`rollup::UPSERT_SIZES`].
    upsert_sql: Vec<(rollup::Level, Vec<(usize, String)>)>,
    /// The store's count of deleted devices, and its value when the caches
    /// were last known good: a deleted device's ids must not be reused.
    deletions: Arc<AtomicU64>,
    seen_deletions: u64,
}

impl Writer {
    pub(super) fn new(db: DatabaseConnection, deletions: Arc<AtomicU64>) -> Self {
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
        let upsert_sql = rollup::LEVELS
            .iter()
            .map(|&level| {
                let sizes = rollup::UPSERT_SIZES
                    .iter()
                    .map(|&n| (n, rollup::upsert_sql(backend, level, n)))
                    .collect();
                (level, sizes)
            })
            .collect();
        let pg = (backend == DatabaseBackend::Postgres)
            .then(|| db.get_postgres_connection_pool().clone());
        Self {
            db,
            pg,
            devices: HashMap::new(),
            series: HashMap::new(),
            insert_sql,
            upsert_sql,
            seen_deletions: deletions.load(Ordering::Acquire),
            deletions,
        }
    }

    /// Empties the id caches if a device was deleted since they were
    /// filled: its readings still in flight must find (or make) rows that
    /// exist, not land under series that are gone.
    fn check_deletions(&mut self) {
        let now = self.deletions.load(Ordering::Acquire);
        if now != self.seen_deletions {
            self.devices.clear();
            self.series.clear();
            self.seen_deletions = now;
        }
    }

    /// Writes `batch` in one transaction. Nothing is cached until the commit
    /// succeeds, so a failed batch can simply be retried.
    pub async fn write(&mut self, batch: &[Reading]) -> Result<(), StoreError> {
        self.write_skipping_repeats(batch, &[]).await.map(drop)
    }

    /// Writes `batch` like [`Self::write`], except the readings in `again`
    /// (messages that may be redeliveries) that are already stored, whose
    /// indices it returns in order.
    pub async fn write_skipping_repeats(
        &mut self,
        batch: &[Reading],
        again: &[Range<usize>],
    ) -> Result<Vec<usize>, StoreError> {
        self.check_deletions();
        let written = match self.pg.clone() {
            Some(pool) => self.write_postgres(&pool, batch, again).await,
            None => self.write_sqlite(batch, again).await,
        };
        if written.is_err() {
            // The batch may have failed on an id that is gone; the retry
            // looks every id up again.
            self.devices.clear();
            self.series.clear();
        }
        written
    }

    async fn write_sqlite(
        &mut self,
        batch: &[Reading],
        again: &[Range<usize>],
    ) -> Result<Vec<usize>, StoreError> {
        let txn = self.db.begin().await?;
        let new_devices = self.register_devices(&txn, batch).await?;
        let new_series = self.register_series(&txn, batch, &new_devices).await?;
        let ids = self.series_ids(batch, &new_devices, &new_series)?;
        let repeats = self.repeats(&txn, batch, &ids, again).await?;
        let rows = rows(batch, &ids, &repeats);

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
        // The rollups change in the same transaction, so they always agree
        // with the readings: a chart read from rollups and an export of the
        // raw rows can never tell different stories.
        for (level, sizes) in &self.upsert_sql {
            let summaries = rollup::summarise(&rows, level.width_ms);
            let mut rest = summaries.as_slice();
            for (size, sql) in sizes {
                while rest.len() >= *size {
                    let (chunk, tail) = rest.split_at(*size);
                    rest = tail;
                    txn.execute_raw(Statement::from_sql_and_values(
                        backend,
                        sql.clone(),
                        rollup::upsert_values(chunk),
                    ))
                    .await?;
                }
            }
        }
        txn.commit().await?;
        self.remember(new_devices, new_series);
        Ok(repeats)
    }

    /// Writes `batch` on PostgreSQL: the readings by one binary `COPY` and
    /// each rollup level by one `UNNEST` upsert, in one transaction, so a
    /// batch of any size costs four round trips. Multi-row INSERTs stored
    /// 73-91k readings/s here; see BENCHMARKS.md for what this path does.
    ///
    /// New devices and series are registered first, outside the readings'
    /// transaction, because sea-orm cannot join a transaction that sqlx
    /// holds. Registering is idempotent, so a batch that then fails leaves
    /// at most a device or series without readings, which its retry uses.
    ///
    /// Redeliveries are looked for before the transaction: only committed
    /// readings can match, and the transaction would see no more.
    async fn write_postgres(
        &mut self,
        pool: &PgPool,
        batch: &[Reading],
        again: &[Range<usize>],
    ) -> Result<Vec<usize>, StoreError> {
        let new_devices = self.register_devices(&self.db, batch).await?;
        let new_series = self.register_series(&self.db, batch, &new_devices).await?;
        let ids = self.series_ids(batch, &new_devices, &new_series)?;
        let repeats = self.repeats(&self.db, batch, &ids, again).await?;
        let rows = rows(batch, &ids, &repeats);

        let mut txn = pool.begin().await?;
        let mut copy = txn
            .copy_in_raw("COPY reading (series_id, ts, value) FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(copy_binary(&rows)).await?;
        copy.finish().await?;
        for (level, _) in &self.upsert_sql {
            let summaries = rollup::summarise(&rows, level.width_ms);
            rollup::upsert_unnest(&mut txn, *level, &summaries).await?;
        }
        txn.commit().await?;
        self.remember(new_devices, new_series);
        Ok(repeats)
    }

    /// Which readings in `again` are redeliveries: exactly the same reading
    /// (series, timestamp and value) is already stored, or comes earlier in
    /// the batch. `ids` are the readings' series ids. Returns their indices
    /// into `batch`, in order.
    ///
    /// A device that lost its connection before a PUBACK arrived sends the
    /// message again on its next connection, first thing, and often
    /// without the DUP flag (rumqttc never sets it), so no flag tells a
    /// redelivery from a new message. The readings do: a device that sends
    /// its own `ts` sends the same readings again, and skipping a reading
    /// already stored exactly loses nothing. Readings stamped by the server
    /// get a new time on each delivery and cannot match, so the edge never
    /// marks them.
    async fn repeats<C: ConnectionTrait>(
        &self,
        db: &C,
        batch: &[Reading],
        ids: &[i64],
        again: &[Range<usize>],
    ) -> Result<Vec<usize>, StoreError> {
        if again.is_empty() {
            return Ok(Vec::new());
        }
        let in_again = |i: usize| {
            let at = again.partition_point(|range| range.end <= i);
            again.get(at).is_some_and(|range| range.contains(&i))
        };
        // Each candidate's exact reading, and whether it has been met
        // earlier in the batch.
        let mut met: HashMap<(i64, i64, u64), bool> = HashMap::new();
        for i in again.iter().flat_map(Clone::clone) {
            met.insert((ids[i], batch[i].ts, batch[i].value.to_bits()), false);
        }
        let mut repeats = Vec::new();
        let mut unseen = Vec::new();
        for ((i, r), &series) in batch.iter().enumerate().zip(ids) {
            let Some(earlier) = met.get_mut(&(series, r.ts, r.value.to_bits())) else {
                continue;
            };
            if *earlier && in_again(i) {
                repeats.push(i);
            } else if !*earlier {
                *earlier = true;
                if in_again(i) {
                    unseen.push((i, series));
                }
            }
        }
        // The rest are looked up in the store, by the `(series_id, ts)`
        // index, a chunk at a time.
        let backend = self.db.get_database_backend();
        let mut stored: HashSet<(i64, i64, u64)> = HashSet::new();
        for chunk in unseen.chunks(LOOKUP_CHUNK) {
            let mut values = Vec::with_capacity(chunk.len() * 2);
            let mut tuples = Vec::with_capacity(chunk.len());
            for (n, &(i, series)) in chunk.iter().enumerate() {
                let a = placeholder(backend, 2 * n + 1);
                let b = placeholder(backend, 2 * n + 2);
                tuples.push(format!("(CAST({a} AS BIGINT), CAST({b} AS BIGINT))"));
                values.push(Value::BigInt(Some(series)));
                values.push(Value::BigInt(Some(batch[i].ts)));
            }
            let sql = format!(
                "WITH c (series_id, ts) AS (VALUES {}) \
                 SELECT r.series_id, r.ts, r.value FROM c \
                 JOIN reading r ON r.series_id = c.series_id AND r.ts = c.ts",
                tuples.join(", ")
            );
            for row in db
                .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
                .await?
            {
                let series: i64 = row.try_get("", "series_id")?;
                let ts: i64 = row.try_get("", "ts")?;
                let value: f64 = row.try_get("", "value")?;
                stored.insert((series, ts, value.to_bits()));
            }
        }
        for (i, series) in unseen {
            let r = &batch[i];
            if stored.contains(&(series, r.ts, r.value.to_bits())) {
                repeats.push(i);
            }
        }
        repeats.sort_unstable();
        Ok(repeats)
    }

    /// The series id of each reading of `batch`, from the cache or from
    /// this batch's registrations.
    fn series_ids(
        &self,
        batch: &[Reading],
        new_devices: &HashMap<String, i64>,
        new_series: &HashMap<(i64, String), i64>,
    ) -> Result<Vec<i64>, StoreError> {
        batch
            .iter()
            .map(|r| {
                let series_id = self.device_id(new_devices, &r.device).and_then(|d| {
                    self.series
                        .get(&d)
                        .and_then(|m| m.get(&r.metric))
                        .or_else(|| new_series.get(&(d, r.metric.clone())))
                        .copied()
                });
                // Registration covers every reading of the batch, so a miss
                // would be a bug; failing the batch keeps it for retry.
                series_id.ok_or_else(|| {
                    StoreError::Db(DbErr::RecordNotFound(format!(
                        "series {}/{}",
                        r.device, r.metric
                    )))
                })
            })
            .collect()
    }

    /// Caches what a committed batch registered.
    fn remember(
        &mut self,
        new_devices: HashMap<String, i64>,
        new_series: HashMap<(i64, String), i64>,
    ) {
        self.devices.extend(new_devices);
        for ((device_id, metric), id) in new_series {
            self.series.entry(device_id).or_default().insert(metric, id);
        }
    }

    /// A device's id, from the cache or from this batch's registrations.
    fn device_id(&self, new_devices: &HashMap<String, i64>, name: &str) -> Option<i64> {
        self.devices
            .get(name)
            .or_else(|| new_devices.get(name))
            .copied()
    }

    /// Registers every device of the batch that is not cached yet, with one
    /// multi-row INSERT and one SELECT per [`REGISTER_CHUNK`] devices, and
    /// returns their ids. A fleet that appears at once (a first start, or a
    /// restart with an empty cache) then costs a few statements per batch,
    /// not several per device; registering 1,000 new devices one by one
    /// held live updates back by 20-60 ms per batch.
    async fn register_devices<C: ConnectionTrait>(
        &self,
        db: &C,
        batch: &[Reading],
    ) -> Result<HashMap<String, i64>, DbErr> {
        let mut first_seen: HashMap<&str, i64> = HashMap::new();
        for r in batch
            .iter()
            .filter(|r| !self.devices.contains_key(&r.device))
        {
            let ts = first_seen.entry(&r.device).or_insert(r.ts);
            *ts = (*ts).min(r.ts);
        }
        let mut ids = HashMap::with_capacity(first_seen.len());
        let unknown: Vec<(&str, i64)> = first_seen.into_iter().collect();
        for chunk in unknown.chunks(REGISTER_CHUNK) {
            device::Entity::insert_many(chunk.iter().map(|&(name, ts)| device::ActiveModel {
                id: NotSet,
                name: Set(name.to_owned()),
                first_seen: Set(ts),
                secret_hash: NotSet,
                disabled: NotSet,
                label: NotSet,
                removed_at: NotSet,
            }))
            .on_conflict(
                OnConflict::column(device::Column::Name)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
            let found: Vec<(i64, String)> = device::Entity::find()
                .select_only()
                .column(device::Column::Id)
                .column(device::Column::Name)
                .filter(device::Column::Name.is_in(chunk.iter().map(|(name, _)| *name)))
                .into_tuple()
                .all(db)
                .await?;
            ids.extend(found.into_iter().map(|(id, name)| (name, id)));
        }
        Ok(ids)
    }

    /// Registers every series of the batch that is not cached yet, the same
    /// way as [`Self::register_devices`].
    async fn register_series<C: ConnectionTrait>(
        &self,
        db: &C,
        batch: &[Reading],
        new_devices: &HashMap<String, i64>,
    ) -> Result<HashMap<(i64, String), i64>, DbErr> {
        let mut unknown: Vec<(i64, &str)> = Vec::new();
        let mut seen: HashSet<(i64, &str)> = HashSet::new();
        for r in batch {
            let Some(device_id) = self.device_id(new_devices, &r.device) else {
                continue;
            };
            let cached = self
                .series
                .get(&device_id)
                .is_some_and(|m| m.contains_key(&r.metric));
            if !cached && seen.insert((device_id, &r.metric)) {
                unknown.push((device_id, &r.metric));
            }
        }
        let mut ids = HashMap::with_capacity(unknown.len());
        for chunk in unknown.chunks(REGISTER_CHUNK) {
            series::Entity::insert_many(chunk.iter().map(|&(device_id, metric)| {
                series::ActiveModel {
                    id: NotSet,
                    device_id: Set(device_id),
                    metric: Set(metric.to_owned()),
                }
            }))
            .on_conflict(
                OnConflict::columns([series::Column::DeviceId, series::Column::Metric])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
            let devices: HashSet<i64> = chunk.iter().map(|(d, _)| *d).collect();
            let found: Vec<(i64, i64, String)> = series::Entity::find()
                .select_only()
                .column(series::Column::Id)
                .column(series::Column::DeviceId)
                .column(series::Column::Metric)
                .filter(series::Column::DeviceId.is_in(devices))
                .into_tuple()
                .all(db)
                .await?;
            ids.extend(
                found
                    .into_iter()
                    .map(|(id, device_id, metric)| ((device_id, metric), id)),
            );
        }
        Ok(ids)
    }
}

/// The batch less `repeats`, as `(series_id, ts, value)` rows sorted for
/// insertion. `ids` are the readings' series ids.
fn rows(batch: &[Reading], ids: &[i64], repeats: &[usize]) -> Vec<(i64, i64, f64)> {
    let mut rows: Vec<_> = skipping(batch.iter().zip(ids), repeats)
        .map(|(r, &series)| (series, r.ts, r.value))
        .collect();
    // Insert in index order. Each series appends to its own leaf of the
    // `(series_id, ts)` index, so an unsorted batch hops between thousands
    // of pages; sorted, consecutive rows land on the same page while it is
    // hot in the CPU cache.
    rows.sort_unstable_by_key(|&(series, ts, _)| (series, ts));
    rows
}

/// `items` without those at the positions in `skip`, which are sorted.
fn skipping<'a, T>(
    items: impl IntoIterator<Item = T> + 'a,
    skip: &'a [usize],
) -> impl Iterator<Item = T> + 'a {
    let mut skip = skip.iter().peekable();
    items
        .into_iter()
        .enumerate()
        .filter(move |(i, _)| skip.next_if_eq(&i).is_none())
        .map(|(_, item)| item)
}

/// `rows` in PostgreSQL's binary COPY format: a signature and header, then
/// per row a field count and each field as a length and big-endian bytes,
/// then a trailer. Binary needs no number formatting or parsing.
fn copy_binary(rows: &[(i64, i64, f64)]) -> Vec<u8> {
    const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let mut out = Vec::with_capacity(HEADER.len() + 8 + rows.len() * 38 + 2);
    out.extend_from_slice(HEADER);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    for &(series_id, ts, value) in rows {
        out.extend_from_slice(&3i16.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&series_id.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&value.to_bits().to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Devices or series registered per statement; far below the bind limits.
const REGISTER_CHUNK: usize = 500;

/// Possible redeliveries looked up per statement: two bound values each.
const LOOKUP_CHUNK: usize = 500;

/// A batch at least this large means the writer is under heavy load.
const HEAVY_BATCH: usize = 20_000;

/// Under heavy load, the least time from one transaction's start to the
/// next. At 150,000 readings/s this makes batches of about 75,000 rows.
const HEAVY_SPACING: Duration = Duration::from_millis(500);

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
///
/// `committed` is called with each batch once it is durable, and with when
/// ingest received its earliest message; the store knows nothing of who
/// listens.
pub async fn run(
    mut writer: Writer,
    mut queue: QueueRx,
    mut committed: impl FnMut(Vec<Reading>, Instant) + Send,
    metrics: Arc<Metrics>,
    pace: Pace,
    give_up: CancellationToken,
) {
    let mut last_start: Option<Instant> = None;
    let mut heavy = false;
    while let Some(first) = queue.recv().await {
        // Under heavy load, space transactions out. Each transaction
        // rewrites one index page per series it touches, whatever the
        // number of rows, so at 150,000 readings/s from 3,000 series the
        // disk traffic and CPU go to rewriting the same pages several times
        // a second. Waiting lets the next batch take in more rows for the
        // same page writes. Light load is never delayed.
        if heavy {
            if let Some(start) = last_start {
                tokio::time::sleep_until((start + HEAVY_SPACING).into()).await;
            }
        }
        // Take whatever else is already waiting: under load batches grow by
        // themselves, which is what keeps the per-reading cost low, while a
        // lone message is written at once, which keeps latency low.
        let received_at = first.at;
        let mut acks: Vec<(Committed, u16)> = Vec::new();
        let mut again: Vec<Range<usize>> = Vec::new();
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(mut arrival) = next.take() {
            let start = batch.len();
            batch.append(&mut arrival.readings);
            if arrival.maybe_again {
                again.push(start..batch.len());
            }
            acks.extend(arrival.ack);
            if batch.len() < pace.batch_max {
                next = queue.try_recv();
            }
        }
        let mut delay = Duration::from_millis(50);
        let started = Instant::now();
        last_start = Some(started);
        heavy = batch.len() >= HEAVY_BATCH;
        let repeats = loop {
            let result = writer.write_skipping_repeats(&batch, &again).await;
            metrics
                .store_failing
                .store(u64::from(result.is_err()), Ordering::Relaxed);
            match result {
                Ok(repeats) => break Some(repeats),
                Err(e) if give_up.is_cancelled() => {
                    tracing::error!("dropping {} readings at shutdown: {e}", batch.len());
                    break None;
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
        let Some(repeats) = repeats else {
            Metrics::add(&metrics.dropped, batch.len() as u64);
            continue;
        };
        if !repeats.is_empty() {
            // Viewers saw these the first time; they are not news.
            Metrics::add(&metrics.redelivered, repeats.len() as u64);
            tracing::debug!("{} redelivered readings were already stored", repeats.len());
            batch = skipping(batch, &repeats).collect();
        }
        metrics.write_seconds.observe_duration(started.elapsed(), 1);
        metrics.write_batch.observe(batch.len() as u64);
        Metrics::add(&metrics.stored, batch.len() as u64);
        // Only now may the devices hear that their readings are safe. A
        // session that has gone away simply misses its acknowledgement,
        // and its device sends the message again when it reconnects.
        for (session, pkid) in acks {
            let _ = session.send(pkid);
        }
        committed(batch, received_at);
        if !pace.pause.is_zero() {
            tokio::time::sleep(pace.pause).await;
        }
    }
}
