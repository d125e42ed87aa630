//! One instance at a time: background work that must not run twice over
//! the same database (retention's deletes) runs only while this process
//! holds a PostgreSQL advisory lock. Instances sharing a database each try
//! for the lock; the one that gets it works until its connection or the
//! process dies, when PostgreSQL releases the lock and another instance
//! takes over within [`RETRY`]. On SQLite there is only ever one instance,
//! so the work simply runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::{self, Connection, PgConnection};
use sea_orm::DatabaseBackend;
use tokio_util::sync::CancellationToken;

use super::Store;

/// How often a waiting instance tries for the lock, and how often the
/// holder checks that its connection (and so its lock) is still alive.
pub const RETRY: Duration = Duration::from_secs(2);

/// The advisory lock key of retention: "SLRETAIN" in ASCII.
pub const RETENTION: i64 = 0x534c_5245_5441_494e;

/// The advisory lock key of the cluster's command sweep: "SLCMDSWP".
pub const COMMAND_SWEEP: i64 = 0x534c_434d_4453_5750;

/// The advisory lock key of migrations: "SLMIGRAT" in ASCII.
const MIGRATIONS: i64 = 0x534c_4d49_4752_4154;

/// The migration lock, held on a connection of its own until released.
pub(super) struct MigrationLock(PgConnection);

impl MigrationLock {
    /// Releases the lock by closing its connection.
    pub(super) async fn release(self) {
        let _ = self.0.close().await;
    }
}

/// On PostgreSQL, waits for and takes the migration lock; `None` on SQLite,
/// where one file has one server.
pub(super) async fn lock_for_migrations(
    db: &sea_orm::DatabaseConnection,
) -> Result<Option<MigrationLock>, super::StoreError> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(None);
    }
    let mut conn = db.get_postgres_connection_pool().acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATIONS)
        .execute(&mut conn)
        .await?;
    Ok(Some(MigrationLock(conn)))
}

impl Store {
    /// Runs `job` while this process holds advisory lock `key`, restarting
    /// it whenever the lock is regained, until `stop` fires. `holding` reads
    /// 1 while the lock is held (for `/metrics`). The job is given a token
    /// that fires when the lock is lost, and must return soon after.
    pub async fn exclusively<F, Fut>(
        &self,
        key: i64,
        holding: &AtomicU64,
        stop: CancellationToken,
        job: F,
    ) where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        if self.db.get_database_backend() != DatabaseBackend::Postgres {
            holding.store(1, Ordering::Relaxed);
            job(stop).await;
            return;
        }
        let pool = self.db.get_postgres_connection_pool().clone();
        while !stop.is_cancelled() {
            if let Some(mut conn) = try_lock(&pool, key).await {
                holding.store(1, Ordering::Relaxed);
                tracing::info!(key, "holding the background lock");
                let lost = stop.child_token();
                let work = job(lost.clone());
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        () = &mut work => break,
                        () = tokio::time::sleep(RETRY) => {
                            if conn.ping().await.is_err() {
                                tracing::warn!(key, "lost the background lock with its connection");
                                lost.cancel();
                                work.as_mut().await;
                                break;
                            }
                        }
                    }
                }
                holding.store(0, Ordering::Relaxed);
                // Closing the connection releases the lock.
                let _ = conn.close().await;
                if stop.is_cancelled() {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// A connection of its own holding lock `key`, or `None` if another
/// session holds it or the database cannot be reached.
async fn try_lock(pool: &sqlx::PgPool, key: i64) -> Option<PgConnection> {
    // Taken out of the pool for good: a session lock belongs to one
    // connection, which the pool must never hand to anyone else.
    let mut conn = pool.acquire().await.ok()?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .ok()?;
    if got {
        Some(conn)
    } else {
        let _ = conn.close().await;
        None
    }
}
