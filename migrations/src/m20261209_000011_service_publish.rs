//! Service accounts may be granted commands as well as the feed: the
//! devices (`command/<id>`, or `command/+` for all) on whose command topic
//! they may publish a tracked command. Existing accounts get none.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ServiceAccount {
    Table,
    Publish,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ServiceAccount::Table)
                    // The granted topics, as a JSON array of strings.
                    .add_column(
                        ColumnDef::new(ServiceAccount::Publish)
                            .text()
                            .not_null()
                            .default("[]"),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ServiceAccount::Table)
                    .drop_column(ServiceAccount::Publish)
                    .to_owned(),
            )
            .await
    }
}
