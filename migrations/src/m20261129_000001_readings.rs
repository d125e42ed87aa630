//! The first schema: devices, their series (one per metric) and readings.
//!
//! Readings reference a series id rather than repeating device and metric
//! names, which keeps each row to three numbers and makes the
//! `(series_id, ts)` index the natural path for every chart query. The
//! latest value and "last seen" are read from that index too, rather than
//! kept in columns that every batch would have to update.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_pk_auto, double, string, string_uniq};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    Id,
    Name,
    FirstSeen,
}

#[derive(DeriveIden)]
enum Series {
    Table,
    Id,
    DeviceId,
    Metric,
}

#[derive(DeriveIden)]
enum Reading {
    Table,
    Id,
    SeriesId,
    Ts,
    Value,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Device::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Device::Id))
                    .col(string_uniq(Device::Name))
                    .col(big_integer(Device::FirstSeen))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Series::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Series::Id))
                    .col(big_integer(Series::DeviceId))
                    .col(string(Series::Metric))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Series::Table, Series::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("series_device_metric")
                    .table(Series::Table)
                    .col(Series::DeviceId)
                    .col(Series::Metric)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Reading::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Reading::Id))
                    .col(big_integer(Reading::SeriesId))
                    .col(big_integer(Reading::Ts))
                    .col(double(Reading::Value))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Reading::Table, Reading::SeriesId)
                            .to(Series::Table, Series::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("reading_series_ts")
                    .table(Reading::Table)
                    .col(Reading::SeriesId)
                    .col(Reading::Ts)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Reading::Table.into_iden(),
            Series::Table.into_iden(),
            Device::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
