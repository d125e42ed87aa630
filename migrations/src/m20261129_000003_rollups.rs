//! Rollups: per-series summaries of readings over 1-minute and 15-minute
//! buckets, kept up to date by the writer in the same transaction as the
//! readings, so a chart of a year reads about 35,000 summaries instead of
//! 525,600 readings.
//!
//! Each row holds the count, sum, minimum and maximum of its readings and
//! the times of the first and last, which is what the series API's buckets
//! are made of; keeping the extremes (not only an average) is what lets a
//! one-sample spike in a year of data still show on the chart.
//!
//! Buckets are aligned in UTC. Fifteen minutes rather than an hour is the
//! coarser level because every time zone in use today is offset from UTC by
//! a multiple of 15 minutes (India +5:30, Nepal +5:45): a bucket boundary
//! at a local hour or midnight anywhere is then a boundary of this level.
//!
//! The tables are written in SQL because SQLite stores them best as
//! `WITHOUT ROWID` tables, clustered by `(series_id, bucket)`, so a range
//! of one series is one contiguous read; sea-query has no such option.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The rollup tables and their bucket widths in milliseconds, finest
/// first; the server's `store::rollup::LEVELS` must agree.
const LEVELS: [(&str, i64); 2] = [("rollup_1m", 60_000), ("rollup_15m", 900_000)];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let (int, real, suffix) = match backend {
            DatabaseBackend::Sqlite => ("INTEGER", "REAL", " WITHOUT ROWID"),
            _ => ("BIGINT", "DOUBLE PRECISION", ""),
        };
        for (table, _) in LEVELS {
            db.execute_unprepared(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                   series_id {int} NOT NULL REFERENCES series (id) ON DELETE CASCADE, \
                   bucket {int} NOT NULL, \
                   n {int} NOT NULL, \
                   total {real} NOT NULL, \
                   low {real} NOT NULL, \
                   high {real} NOT NULL, \
                   first_ts {int} NOT NULL, \
                   last_ts {int} NOT NULL, \
                   PRIMARY KEY (series_id, bucket)){suffix}"
            ))
            .await?;
        }
        // Readings stored before this migration get their rollups now, so
        // history charts cover them too. The remainder is taken so that it
        // is never negative, which floors timestamps before 1970 correctly.
        let (fine, width) = LEVELS[0];
        db.execute_unprepared(&format!(
            "INSERT INTO {fine} (series_id, bucket, n, total, low, high, first_ts, last_ts) \
             SELECT series_id, ts - ((ts % {width}) + {width}) % {width} AS b, \
                    COUNT(*), SUM(value), MIN(value), MAX(value), MIN(ts), MAX(ts) \
             FROM reading GROUP BY series_id, b"
        ))
        .await?;
        let (coarse, width) = LEVELS[1];
        db.execute_unprepared(&format!(
            "INSERT INTO {coarse} (series_id, bucket, n, total, low, high, first_ts, last_ts) \
             SELECT series_id, bucket - ((bucket % {width}) + {width}) % {width} AS b, \
                    SUM(n), SUM(total), MIN(low), MAX(high), MIN(first_ts), MAX(last_ts) \
             FROM {fine} GROUP BY series_id, b"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, _) in LEVELS {
            manager
                .get_connection()
                .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}
