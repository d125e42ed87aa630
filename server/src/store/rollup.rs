//! Rollups: the writer folds every batch into per-series summaries over
//! 1-minute and 15-minute UTC buckets, in the same transaction as the
//! readings, and the series API aggregates those summaries (or raw
//! readings) into the buckets a chart asks for.
//!
//! The tables are created by migration `m20261129_000003_rollups`, which
//! explains the choice of widths.

use sea_orm::sqlx;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, FromQueryResult, Statement, Value};

/// One rollup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub table: &'static str,
    /// The bucket width in milliseconds; buckets start at multiples of it.
    pub width_ms: i64,
}

/// The rollup levels, finest first.
pub const LEVELS: [Level; 2] = [
    Level {
        table: "rollup_1m",
        width_ms: 60_000,
    },
    Level {
        table: "rollup_15m",
        width_ms: 900_000,
    },
];

/// What a set of readings amounts to: enough to draw a min/max band with an
/// average line, and to merge with other summaries exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first_ts: i64,
    pub last_ts: i64,
}

impl Summary {
    /// The summary of one reading.
    pub fn of(ts: i64, value: f64) -> Self {
        Self {
            count: 1,
            sum: value,
            min: value,
            max: value,
            first_ts: ts,
            last_ts: ts,
        }
    }

    /// Folds `other` in; merging is associative and commutative, which is
    /// what lets late readings and any order of batches give one answer.
    pub fn merge(&mut self, other: &Summary) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.first_ts = self.first_ts.min(other.first_ts);
        self.last_ts = self.last_ts.max(other.last_ts);
    }
}

/// The start of the `width`-wide bucket holding `ts`, flooring correctly
/// before 1970 too.
pub fn bucket_of(ts: i64, width: i64) -> i64 {
    ts - ts.rem_euclid(width)
}

/// Summarises `rows` (`(series_id, ts, value)`, sorted by series then time,
/// as the writer inserts them) into one entry per series and bucket.
pub fn summarise(rows: &[(i64, i64, f64)], width: i64) -> Vec<(i64, i64, Summary)> {
    let mut out: Vec<(i64, i64, Summary)> = Vec::new();
    for &(series, ts, value) in rows {
        let bucket = bucket_of(ts, width);
        match out.last_mut() {
            Some((s, b, summary)) if *s == series && *b == bucket => {
                summary.merge(&Summary::of(ts, value));
            }
            _ => out.push((series, bucket, Summary::of(ts, value))),
        }
    }
    out
}

/// Rows per upsert statement, largest first, for the same reason as the
/// writer's `INSERT_SIZES`: a handful of statements, each prepared once.
/// Eight values per row keeps the largest at 8,192 parameters.
pub const UPSERT_SIZES: [usize; 4] = [1024, 128, 16, 1];

/// An INSERT of `rows` summaries into `level` that merges each with the
/// stored one when the bucket already exists.
pub fn upsert_sql(backend: DatabaseBackend, level: Level, rows: usize) -> String {
    let table = level.table;
    let mut sql = format!(
        "INSERT INTO {table} (series_id, bucket, n, total, low, high, first_ts, last_ts) VALUES "
    );
    let mut param = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..8 {
            if col > 0 {
                sql.push_str(", ");
            }
            param += 1;
            sql.push_str(&super::placeholder(backend, param));
        }
        sql.push(')');
    }
    sql.push_str(&merge_clause(backend, level));
    sql
}

/// The `ON CONFLICT` clause that merges a new summary into a stored one.
fn merge_clause(backend: DatabaseBackend, level: Level) -> String {
    let table = level.table;
    // SQLite's two-argument MIN/MAX are PostgreSQL's LEAST/GREATEST.
    let (least, greatest) = match backend {
        DatabaseBackend::Postgres => ("LEAST", "GREATEST"),
        _ => ("MIN", "MAX"),
    };
    format!(
        " ON CONFLICT (series_id, bucket) DO UPDATE SET \
         n = {table}.n + excluded.n, \
         total = {table}.total + excluded.total, \
         low = {least}({table}.low, excluded.low), \
         high = {greatest}({table}.high, excluded.high), \
         first_ts = {least}({table}.first_ts, excluded.first_ts), \
         last_ts = {greatest}({table}.last_ts, excluded.last_ts)"
    )
}

/// Upserts `rows` into `level` on PostgreSQL as one statement whatever
/// their number: each column travels as one array, which `UNNEST` turns
/// back into rows. `rows` holds each (series, bucket) once, as
/// [`summarise`] makes it, which `ON CONFLICT` requires.
pub async fn upsert_unnest(
    conn: &mut sqlx::PgConnection,
    level: Level,
    rows: &[(i64, i64, Summary)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} (series_id, bucket, n, total, low, high, first_ts, last_ts) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::float8[], \
         $5::float8[], $6::float8[], $7::int8[], $8::int8[]){}",
        level.table,
        merge_clause(DatabaseBackend::Postgres, level)
    );
    let column = |f: fn(&(i64, i64, Summary)) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let real = |f: fn(&(i64, i64, Summary)) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    // The only text spliced in is a table name from [`LEVELS`].
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(column(|r| r.0))
        .bind(column(|r| r.1))
        .bind(column(|r| r.2.count))
        .bind(real(|r| r.2.sum))
        .bind(real(|r| r.2.min))
        .bind(real(|r| r.2.max))
        .bind(column(|r| r.2.first_ts))
        .bind(column(|r| r.2.last_ts))
        .execute(conn)
        .await?;
    Ok(())
}

/// The bound values of one upsert, in [`upsert_sql`]'s column order.
pub fn upsert_values(rows: &[(i64, i64, Summary)]) -> Vec<Value> {
    let mut values = Vec::with_capacity(rows.len() * 8);
    for &(series, bucket, s) in rows {
        values.extend([
            Value::BigInt(Some(series)),
            Value::BigInt(Some(bucket)),
            Value::BigInt(Some(s.count)),
            Value::Double(Some(s.sum)),
            Value::Double(Some(s.min)),
            Value::Double(Some(s.max)),
            Value::BigInt(Some(s.first_ts)),
            Value::BigInt(Some(s.last_ts)),
        ]);
    }
    values
}

/// Where a series query reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Raw,
    Rollup(Level),
}

#[derive(Debug, FromQueryResult)]
struct BucketRow {
    k: i64,
    n: i64,
    total: f64,
    low: f64,
    high: f64,
    first_ts: i64,
    last_ts: i64,
}

/// Aggregates series `series_id` into the buckets `[bounds[i], bounds[i+1])`
/// and returns `(i, summary)` for each bucket that has data, in order.
///
/// The boundaries travel as a `VALUES` list that drives the join, so the
/// database does one index range scan per bucket and returns at most one
/// row per bucket, whatever the number of readings or summaries behind
/// them; both SQLite and PostgreSQL plan it that way.
pub async fn aggregate<C: ConnectionTrait>(
    db: &C,
    series_id: i64,
    source: Source,
    bounds: &[i64],
) -> Result<Vec<(usize, Summary)>, DbErr> {
    if bounds.len() < 2 {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let mut values = Vec::with_capacity(bounds.len() * 2 + 1);
    let mut param = 0;
    let mut next = |values: &mut Vec<Value>, v: i64| {
        values.push(Value::BigInt(Some(v)));
        param += 1;
        let mark = super::placeholder(backend, param);
        match backend {
            DatabaseBackend::Postgres => mark + "::BIGINT",
            _ => mark,
        }
    };
    let mut list = String::with_capacity(bounds.len() * 24);
    for (k, pair) in bounds.windows(2).enumerate() {
        if k > 0 {
            list.push_str(", ");
        }
        let (lo, hi) = (next(&mut values, pair[0]), next(&mut values, pair[1]));
        list.push_str(&format!("({k}, {lo}, {hi})"));
    }
    let series = next(&mut values, series_id);
    let (table, key, cols) = match source {
        Source::Raw => (
            "reading",
            "ts",
            "COUNT(*) AS n, SUM(r.value) AS total, MIN(r.value) AS low, MAX(r.value) AS high, \
             MIN(r.ts) AS first_ts, MAX(r.ts) AS last_ts",
        ),
        Source::Rollup(level) => (
            level.table,
            "bucket",
            "CAST(SUM(r.n) AS BIGINT) AS n, SUM(r.total) AS total, MIN(r.low) AS low, MAX(r.high) AS high, \
             MIN(r.first_ts) AS first_ts, MAX(r.last_ts) AS last_ts",
        ),
    };
    // CROSS JOIN tells SQLite to keep the boundary list as the outer loop.
    // The casts are for PostgreSQL, where a literal is a 4-byte integer and
    // the sum of BIGINTs is NUMERIC.
    let sql = format!(
        "WITH b (k, lo, hi) AS (VALUES {list}) \
         SELECT CAST(b.k AS BIGINT) AS k, {cols} FROM b CROSS JOIN {table} r \
         WHERE r.series_id = {series} AND r.{key} >= b.lo AND r.{key} < b.hi \
         GROUP BY b.k ORDER BY b.k"
    );
    let rows = BucketRow::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                usize::try_from(r.k).ok()?,
                Summary {
                    count: r.n,
                    sum: r.total,
                    min: r.low,
                    max: r.high,
                    first_ts: r.first_ts,
                    last_ts: r.last_ts,
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_before_and_after_1970() {
        assert_eq!(bucket_of(59_999, 60_000), 0);
        assert_eq!(bucket_of(60_000, 60_000), 60_000);
        assert_eq!(bucket_of(-1, 60_000), -60_000);
    }

    #[test]
    fn a_batch_folds_into_one_summary_per_series_and_bucket() {
        let rows = [
            (1, 0, 5.0),
            (1, 30_000, -2.0),
            (1, 60_000, 7.0),
            (2, 10, 1.0),
        ];
        let got = summarise(&rows, 60_000);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            (
                1,
                0,
                Summary {
                    count: 2,
                    sum: 3.0,
                    min: -2.0,
                    max: 5.0,
                    first_ts: 0,
                    last_ts: 30_000
                }
            )
        );
        assert_eq!((got[1].0, got[1].1, got[1].2.count), (1, 60_000, 1));
        assert_eq!((got[2].0, got[2].1), (2, 0));
    }

    #[test]
    fn merging_in_any_order_gives_the_same_summary() {
        let parts = [
            Summary::of(5, 1.0),
            Summary::of(1, 9.0),
            Summary::of(3, -4.0),
        ];
        let mut a = parts[0];
        a.merge(&parts[1]);
        a.merge(&parts[2]);
        let mut b = parts[2];
        b.merge(&parts[0]);
        b.merge(&parts[1]);
        assert_eq!(a, b);
        assert_eq!((a.min, a.max, a.first_ts, a.last_ts), (-4.0, 9.0, 1, 5));
    }

    #[test]
    fn upserts_use_each_backends_placeholders_and_extremes() {
        let level = LEVELS[0];
        let sqlite = upsert_sql(DatabaseBackend::Sqlite, level, 2);
        assert_eq!(sqlite.matches('?').count(), 16);
        assert!(sqlite.contains("low = MIN(rollup_1m.low, excluded.low)"));
        let pg = upsert_sql(DatabaseBackend::Postgres, level, 2);
        assert!(pg.contains("$16)") && !pg.contains("$17"));
        assert!(pg.contains("GREATEST(rollup_1m.high, excluded.high)"));
    }
}
