//! Sightline's database schema as sea-orm migrations. The server runs them
//! at start, on SQLite and PostgreSQL alike.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_readings;
mod m20261129_000002_device_credentials;
mod m20261129_000003_rollups;
mod m20261129_000004_commands;
mod m20261129_000005_accounts;
mod m20261206_000006_reading_cascade;
mod m20261207_000007_device_removed;
mod m20261208_000008_desired;
mod m20261208_000009_service_accounts;
mod m20261209_000010_sessions;
mod m20261209_000011_service_publish;

/// Applies every migration in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_readings::Migration),
            Box::new(m20261129_000002_device_credentials::Migration),
            Box::new(m20261129_000003_rollups::Migration),
            Box::new(m20261129_000004_commands::Migration),
            Box::new(m20261129_000005_accounts::Migration),
            Box::new(m20261206_000006_reading_cascade::Migration),
            Box::new(m20261207_000007_device_removed::Migration),
            Box::new(m20261208_000008_desired::Migration),
            Box::new(m20261208_000009_service_accounts::Migration),
            Box::new(m20261209_000010_sessions::Migration),
            Box::new(m20261209_000011_service_publish::Migration),
        ]
    }
}
