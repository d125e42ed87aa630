//! Throwaway PostgreSQL databases for benchmarks: one per run, on a server
//! the operator names, so a measurement never starts on someone's data.

use sea_orm::{ConnectionTrait, Database};

use super::{redact_url, StoreError};

/// A database made for one run, dropped by [`Scratch::drop_database`].
#[derive(Debug)]
pub struct Scratch {
    /// The server's URL as given, used again to drop the database.
    server_url: String,
    name: String,
    /// The new database's URL, for the server under test.
    pub url: String,
}

/// Creates an empty database on the PostgreSQL server at `server_url`
/// (any database on it: the name is replaced).
pub async fn create(server_url: &str) -> Result<Scratch, StoreError> {
    let name = format!("sightline_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(server_url)
        .await
        .map_err(|source| StoreError::Open {
            url: redact_url(server_url),
            source,
        })?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    admin.close().await?;
    let (path, query) = match server_url.split_once('?') {
        Some((path, query)) => (path, format!("?{query}")),
        None => (server_url, String::new()),
    };
    let base = path.rsplit_once('/').map_or(path, |(base, _)| base);
    Ok(Scratch {
        server_url: server_url.to_owned(),
        url: format!("{base}/{name}{query}"),
        name,
    })
}

impl Scratch {
    /// Drops the database, closing whatever connections are still open.
    pub async fn drop_database(self) -> Result<(), StoreError> {
        let admin = Database::connect(&self.server_url).await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        admin.close().await?;
        Ok(())
    }
}
