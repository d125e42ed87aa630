//! Retention: a background task deletes raw readings older than
//! `--retain-raw` and rollups older than `--retain-rollups`, so that charts
//! of old periods still work (from rollups) while the disk stays bounded.
//!
//! Deletes run one series at a time in chunks of [`CHUNK_ROWS`], each its
//! own short transaction on a reader connection, with a pause between
//! chunks. On SQLite a delete needs the single write lock, so one large
//! DELETE would hold the writer (and with it every QoS 1 acknowledgement)
//! for seconds; chunks hold it for milliseconds at a time.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement, Value};
use tokio_util::sync::CancellationToken;

use super::rollup::LEVELS;
use crate::metrics::Metrics;

/// Rows deleted per statement.
pub const CHUNK_ROWS: i64 = 5_000;

/// The pause between chunks, which is when the writer gets its turn.
const CHUNK_PAUSE: Duration = Duration::from_millis(20);

/// How often a pruning pass runs (the first runs at start).
const PASS_EVERY: Duration = Duration::from_secs(60);

/// How long each kind of data is kept, in milliseconds; `None` keeps it
/// forever. (`config::Retention` is how a user writes these.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub raw_ms: Option<i64>,
    pub rollups_ms: Option<i64>,
}

/// The oldest timestamp kept at time `now` by a retention of `keep_ms`, if
/// anything is pruned.
pub fn cutoff(keep_ms: Option<i64>, now: i64) -> Option<i64> {
    keep_ms.map(|ms| now.saturating_sub(ms))
}

/// What one pruning pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub readings: u64,
    pub rollups: u64,
    /// Finished commands, kept as long as raw readings.
    pub commands: u64,
}

/// Deletes everything older than the policy allows at time `now`, chunk by
/// chunk, until done or `stop` fires.
pub async fn prune(
    db: &DatabaseConnection,
    policy: Policy,
    now: i64,
    stop: &CancellationToken,
) -> Result<Pruned, DbErr> {
    let mut pruned = Pruned::default();
    let (raw_cutoff, rollup_cutoff) = (cutoff(policy.raw_ms, now), cutoff(policy.rollups_ms, now));
    if raw_cutoff.is_none() && rollup_cutoff.is_none() {
        return Ok(pruned);
    }
    let backend = db.get_database_backend();
    let ids: Vec<i64> = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT id FROM series ORDER BY id",
        ))
        .await?
        .iter()
        .filter_map(|row| row.try_get::<i64>("", "id").ok())
        .collect();
    let mut tables: Vec<(&str, &str, i64)> = Vec::new();
    if let Some(cutoff) = raw_cutoff {
        tables.push(("reading", "ts", cutoff));
    }
    if let Some(cutoff) = rollup_cutoff {
        for level in LEVELS {
            tables.push((level.table, "bucket", cutoff));
        }
    }
    // Finished commands go with the raw readings of their time; a command
    // still waiting (no completion time) is never deleted.
    if let Some(cutoff) = raw_cutoff {
        loop {
            if stop.is_cancelled() {
                return Ok(pruned);
            }
            let deleted = delete_commands(db, cutoff).await?;
            pruned.commands += deleted;
            if deleted == 0 {
                break;
            }
            tokio::time::sleep(CHUNK_PAUSE).await;
        }
    }
    for series_id in ids {
        for &(table, key, cutoff) in &tables {
            loop {
                if stop.is_cancelled() {
                    return Ok(pruned);
                }
                let deleted = delete_chunk(db, table, key, series_id, cutoff).await?;
                if table == "reading" {
                    pruned.readings += deleted;
                } else {
                    pruned.rollups += deleted;
                }
                if deleted == 0 {
                    break;
                }
                tokio::time::sleep(CHUNK_PAUSE).await;
            }
        }
    }
    Ok(pruned)
}

/// Deletes up to about [`CHUNK_ROWS`] of the oldest rows of one series in
/// `table` with `key < cutoff`, and returns how many went. The chunk ends
/// at the key of its last row, found through the `(series_id, key)` index,
/// which works alike on both databases and on tables without row ids.
async fn delete_chunk(
    db: &DatabaseConnection,
    table: &str,
    key: &str,
    series_id: i64,
    cutoff: i64,
) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let p = |n: usize| super::placeholder(backend, n);
    let end = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT {key} AS k FROM {table} WHERE series_id = {} AND {key} < {} \
                 ORDER BY {key} LIMIT 1 OFFSET {}",
                p(1),
                p(2),
                CHUNK_ROWS - 1
            ),
            [Value::BigInt(Some(series_id)), Value::BigInt(Some(cutoff))],
        ))
        .await?
        .and_then(|row| row.try_get::<i64>("", "k").ok());
    // Past the chunk's last key, or up to the cutoff if fewer rows remain.
    let (op, bound) = match end {
        Some(k) => ("<=", k),
        None => ("<", cutoff),
    };
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "DELETE FROM {table} WHERE series_id = {} AND {key} {op} {}",
                p(1),
                p(2)
            ),
            [Value::BigInt(Some(series_id)), Value::BigInt(Some(bound))],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Deletes up to [`CHUNK_ROWS`] commands that finished before `cutoff`.
async fn delete_commands(db: &DatabaseConnection, cutoff: i64) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "DELETE FROM command WHERE id IN (SELECT id FROM command \
                 WHERE completed_at < {} LIMIT {CHUNK_ROWS})",
                super::placeholder(backend, 1)
            ),
            [Value::BigInt(Some(cutoff))],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Prunes at start and then every [`PASS_EVERY`] until `stop` fires.
pub async fn run(
    db: DatabaseConnection,
    policy: Policy,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    if policy == Policy::default() {
        return;
    }
    tracing::info!(
        raw_ms = ?policy.raw_ms,
        rollups_ms = ?policy.rollups_ms,
        "retention: pruning what is older"
    );
    loop {
        match prune(&db, policy, crate::clock::now_ms(), &stop).await {
            Ok(p) => {
                Metrics::add(&metrics.pruned_readings, p.readings);
                Metrics::add(&metrics.pruned_rollups, p.rollups);
                Metrics::add(&metrics.pruned_commands, p.commands);
                if p != Pruned::default() {
                    tracing::info!(
                        "retention: deleted {} readings, {} rollup rows and {} finished commands",
                        p.readings,
                        p.rollups,
                        p.commands
                    );
                }
            }
            Err(e) => tracing::warn!("retention pass failed, retrying later: {e}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PASS_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cutoff_is_now_less_the_retention() {
        assert_eq!(cutoff(None, 1_000), None);
        assert_eq!(cutoff(Some(400), 1_000), Some(600));
        assert_eq!(cutoff(Some(i64::MAX), i64::MIN), Some(i64::MIN));
    }
}
