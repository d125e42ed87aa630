//! Each device's desired state: the configuration an operator set for it,
//! which the edge sends retained on `command/<id>/desired`, with the newest
//! version the device acknowledged. One row per device at most, so the
//! table is bounded by the fleet, and it goes with its device.

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
enum Desired {
    Table,
    DeviceId,
    Payload,
    Version,
    SetAt,
    SetBy,
    AckedVersion,
    AckedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Desired::Table)
                    .if_not_exists()
                    .col(big_integer(Desired::DeviceId).primary_key())
                    .col(text(Desired::Payload))
                    .col(big_integer(Desired::Version))
                    .col(big_integer(Desired::SetAt))
                    .col(string(Desired::SetBy))
                    .col(big_integer_null(Desired::AckedVersion))
                    .col(big_integer_null(Desired::AckedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Desired::Table, Desired::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Desired::Table).if_exists().to_owned())
            .await
    }
}
