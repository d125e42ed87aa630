//! Persistent MQTT sessions: for each (device, client id) that connected
//! without a clean session, what MQTT says survives the connection: its
//! subscriptions, the commands sent to it and not acknowledged, and the
//! packet ids (and fingerprints) of the publishes it sent whose
//! acknowledgement it may not have received. A row lives until the session expires; each device holds
//! at most a few, and they go with their device.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, string, text};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum MqttSession {
    Table,
    DeviceId,
    ClientId,
    Owner,
    ExpirySecs,
    EndedAt,
    Subscriptions,
    InFlight,
    Received,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MqttSession::Table)
                    .if_not_exists()
                    .col(big_integer(MqttSession::DeviceId))
                    .col(string(MqttSession::ClientId))
                    // The connection that holds the row now: only it may
                    // write the row's state.
                    .col(big_integer(MqttSession::Owner))
                    .col(big_integer(MqttSession::ExpirySecs))
                    .col(big_integer_null(MqttSession::EndedAt))
                    .col(text(MqttSession::Subscriptions))
                    .col(text(MqttSession::InFlight))
                    .col(text(MqttSession::Received))
                    .primary_key(
                        Index::create()
                            .col(MqttSession::DeviceId)
                            .col(MqttSession::ClientId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(MqttSession::Table, MqttSession::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(MqttSession::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
