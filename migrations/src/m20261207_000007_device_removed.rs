//! A device can be deleted while its readings are kept: `removed_at` marks
//! it gone from the fleet, its page and the broker, while its history stays
//! exportable, and adding the id again brings the device back with it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    RemovedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Device::Table)
                    .add_column_if_not_exists(
                        ColumnDef::new(Device::RemovedAt).big_integer().null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Device::Table)
                    .drop_column(Device::RemovedAt)
                    .to_owned(),
            )
            .await
    }
}
