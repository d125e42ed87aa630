//! Commands to devices, kept with their whole lifecycle: what was asked,
//! when it was sent, delivered and answered, and how it ended.
//!
//! A command lives in the database from the moment it is accepted, so a
//! persistent command survives a restart and the device page can list the
//! history of what operators asked of a device.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, boolean, string, string_len, text, text_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Command {
    Table,
    Id,
    DeviceId,
    Name,
    Params,
    TwoWay,
    Persistent,
    TimeoutMs,
    TtlMs,
    State,
    CreatedAt,
    SentAt,
    DeliveredAt,
    CompletedAt,
    Response,
    Error,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Command::Table)
                    .if_not_exists()
                    .col(string_len(Command::Id, 64).primary_key())
                    .col(big_integer(Command::DeviceId))
                    .col(string(Command::Name))
                    .col(text(Command::Params))
                    .col(boolean(Command::TwoWay))
                    .col(boolean(Command::Persistent))
                    .col(big_integer(Command::TimeoutMs))
                    .col(big_integer(Command::TtlMs))
                    .col(string_len(Command::State, 16))
                    .col(big_integer(Command::CreatedAt))
                    .col(big_integer_null(Command::SentAt))
                    .col(big_integer_null(Command::DeliveredAt))
                    .col(big_integer_null(Command::CompletedAt))
                    .col(text_null(Command::Response))
                    .col(text_null(Command::Error))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Command::Table, Command::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The device page lists a device's newest commands first.
        manager
            .create_index(
                Index::create()
                    .name("command_device_created")
                    .table(Command::Table)
                    .col(Command::DeviceId)
                    .col(Command::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // At start, the server reloads the commands that are not finished.
        manager
            .create_index(
                Index::create()
                    .name("command_state")
                    .table(Command::Table)
                    .col(Command::State)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Command::Table).if_exists().to_owned())
            .await
    }
}
