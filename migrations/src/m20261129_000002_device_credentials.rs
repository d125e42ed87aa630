//! Device credentials: a device created by an operator carries the hash of
//! its secret, and can be disabled without deleting its history.
//!
//! Devices that registered themselves on first message (open registration)
//! have no secret; they can only connect while open registration is on.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    SecretHash,
    Disabled,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite allows one column per ALTER TABLE, hence two statements.
        manager
            .alter_table(
                Table::alter()
                    .table(Device::Table)
                    .add_column_if_not_exists(ColumnDef::new(Device::SecretHash).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Device::Table)
                    .add_column_if_not_exists(
                        ColumnDef::new(Device::Disabled)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        // A ThingsBoard-style device logs in with its token alone, so the
        // hash is also how a device is found.
        manager
            .create_index(
                Index::create()
                    .name("device_secret_hash")
                    .table(Device::Table)
                    .col(Device::SecretHash)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("device_secret_hash").to_owned())
            .await?;
        for column in [Device::Disabled, Device::SecretHash] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Device::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
