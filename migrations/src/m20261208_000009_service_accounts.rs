//! Service accounts: MQTT logins that are not devices, for the tools that
//! tap the stream of readings (Node-RED, Telegraf, a Python script). Each
//! has a secret, stored as its SHA-256 like a device's, and the topic
//! filters it was granted; everything else is denied to it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_pk_auto, string, string_uniq, text};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ServiceAccount {
    Table,
    Id,
    Name,
    SecretHash,
    Subscribe,
    CreatedAt,
    CreatedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServiceAccount::Table)
                    .if_not_exists()
                    .col(big_pk_auto(ServiceAccount::Id))
                    .col(string_uniq(ServiceAccount::Name))
                    .col(string(ServiceAccount::SecretHash))
                    // The granted filters, as a JSON array of strings.
                    .col(text(ServiceAccount::Subscribe))
                    .col(big_integer(ServiceAccount::CreatedAt))
                    .col(string(ServiceAccount::CreatedBy))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(ServiceAccount::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
