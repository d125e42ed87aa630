//! Operator accounts: who may sign in to the dashboard and API, their
//! server-side sessions and API tokens, the audit log of what they did,
//! and a free-text label for devices.
//!
//! Sessions and tokens are stored as SHA-256 hashes of the random values
//! the clients hold, so a copy of the database signs nobody in.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, big_pk_auto, string, string_len, string_null, string_uniq,
    text_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    Label,
}

#[derive(DeriveIden)]
enum Account {
    Table,
    Id,
    Name,
    PasswordHash,
    Role,
    CreatedAt,
    PasswordChangedAt,
}

#[derive(DeriveIden)]
enum LoginSession {
    Table,
    IdHash,
    AccountId,
    CreatedAt,
    LastSeenAt,
}

#[derive(DeriveIden)]
enum ApiToken {
    Table,
    Id,
    AccountId,
    Label,
    TokenHash,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum AuditEvent {
    Table,
    Id,
    At,
    Actor,
    Action,
    Target,
    Detail,
    Ip,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Device::Table)
                    .add_column_if_not_exists(ColumnDef::new(Device::Label).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Account::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Account::Id))
                    .col(string_uniq(Account::Name))
                    .col(string(Account::PasswordHash))
                    .col(string_len(Account::Role, 16))
                    .col(big_integer(Account::CreatedAt))
                    .col(big_integer(Account::PasswordChangedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoginSession::Table)
                    .if_not_exists()
                    .col(string_len(LoginSession::IdHash, 64).primary_key())
                    .col(big_integer(LoginSession::AccountId))
                    .col(big_integer(LoginSession::CreatedAt))
                    .col(big_integer(LoginSession::LastSeenAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("login_session_account")
                            .from(LoginSession::Table, LoginSession::AccountId)
                            .to(Account::Table, Account::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("login_session_account_id")
                    .table(LoginSession::Table)
                    .col(LoginSession::AccountId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ApiToken::Table)
                    .if_not_exists()
                    .col(string_len(ApiToken::Id, 64).primary_key())
                    .col(big_integer(ApiToken::AccountId))
                    .col(string_len(ApiToken::Label, 64))
                    .col(string_uniq(ApiToken::TokenHash))
                    .col(big_integer(ApiToken::CreatedAt))
                    .col(big_integer_null(ApiToken::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_token_account")
                            .from(ApiToken::Table, ApiToken::AccountId)
                            .to(Account::Table, Account::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditEvent::Table)
                    .if_not_exists()
                    .col(big_pk_auto(AuditEvent::Id))
                    .col(big_integer(AuditEvent::At))
                    .col(string_len(AuditEvent::Actor, 64))
                    .col(string_len(AuditEvent::Action, 32))
                    .col(string_null(AuditEvent::Target))
                    .col(text_null(AuditEvent::Detail))
                    .col(string_null(AuditEvent::Ip))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_event_at")
                    .table(AuditEvent::Table)
                    .col(AuditEvent::At)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvent::Table.into_iden(),
            ApiToken::Table.into_iden(),
            LoginSession::Table.into_iden(),
            Account::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Device::Table)
                    .drop_column(Device::Label)
                    .to_owned(),
            )
            .await
    }
}
