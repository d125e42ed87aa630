//! Operator accounts, their sessions and API tokens, and the audit log, in
//! the database. Sessions and tokens are looked up by the SHA-256 of the
//! secret the client holds; the secrets themselves are never stored.

use app::model::{Account, ApiToken, AuditEntry, Role};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Statement, Value};

use super::{placeholder, Store, StoreError};

/// A credential that just stopped working, so that live sockets opened
/// with it close at once rather than at their next reconnect. In cluster
/// mode it also crosses the bus, for sockets held by other instances.
/// (`auth` says which callers it ends.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "revoked", content = "id", rename_all = "snake_case")]
pub enum Revoked {
    /// One session ended (sign-out).
    Session(String),
    /// Every session of an account ended (password change).
    SessionsOf(i64),
    /// The account is gone, with its sessions and tokens.
    Account(i64),
    /// One API token was revoked.
    Token(String),
}

/// An account as the server needs it to sign someone in.
#[derive(Clone, Debug, FromQueryResult)]
pub struct AccountRow {
    pub id: i64,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
    pub password_changed_at: i64,
}

impl AccountRow {
    /// The account's role; a value the server never writes (a hand-edited
    /// database) counts as the least privileged.
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Viewer)
    }

    /// The account as admins see it, without the password hash.
    pub fn into_account(self) -> Account {
        Account {
            role: self.role(),
            name: self.name,
            created_at: self.created_at,
            password_changed_at: self.password_changed_at,
        }
    }
}

/// A session row with its account.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub last_seen_at: i64,
    pub created_at: i64,
    pub account: AccountRow,
}

/// An account row joined with the session or token that names it.
#[derive(Debug, FromQueryResult)]
struct Joined {
    key: String,
    key_created_at: i64,
    key_seen_at: Option<i64>,
    id: i64,
    name: String,
    password_hash: String,
    role: String,
    created_at: i64,
    password_changed_at: i64,
}

impl Joined {
    fn split(self) -> (String, i64, Option<i64>, AccountRow) {
        (
            self.key,
            self.key_created_at,
            self.key_seen_at,
            AccountRow {
                id: self.id,
                name: self.name,
                password_hash: self.password_hash,
                role: self.role,
                created_at: self.created_at,
                password_changed_at: self.password_changed_at,
            },
        )
    }
}

#[derive(Debug, FromQueryResult)]
struct ApiTokenRow {
    id: String,
    label: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

#[derive(Debug, FromQueryResult)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target: Option<String>,
    detail: Option<String>,
    ip: Option<String>,
}

#[derive(Debug, FromQueryResult)]
struct Count {
    n: i64,
}

const ACCOUNT_COLUMNS: &str =
    "a.id, a.name, a.password_hash, a.role, a.created_at, a.password_changed_at";

/// Builds a statement from SQL written with `?` placeholders, numbering
/// them for PostgreSQL.
fn statement(db: &DatabaseConnection, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let mut out = String::with_capacity(sql.len() + 8);
    for (n, part) in sql.split('?').enumerate() {
        if n > 0 {
            out.push_str(&placeholder(backend, n));
        }
        out.push_str(part);
    }
    Statement::from_sql_and_values(backend, out, values)
}

/// A new audit event, before the database numbers it.
#[derive(Clone, Debug, Default)]
pub struct NewAuditEvent {
    pub at: i64,
    pub actor: String,
    pub action: &'static str,
    pub target: Option<String>,
    pub detail: Option<String>,
    pub ip: Option<String>,
}

impl Store {
    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        Ok(self
            .db
            .execute_raw(statement(&self.db, sql, values))
            .await?
            .rows_affected())
    }

    /// Creates an account; `Ok(false)` if the name is taken.
    pub async fn add_account(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql =
            "INSERT INTO account (name, password_hash, role, created_at, password_changed_at) \
                   VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING";
        let values = vec![
            name.into(),
            password_hash.into(),
            role.label().into(),
            now_ms.into(),
            now_ms.into(),
        ];
        Ok(self.execute(sql, values).await? > 0)
    }

    pub async fn account(&self, name: &str) -> Result<Option<AccountRow>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM account a WHERE a.name = ?");
        Ok(
            AccountRow::find_by_statement(statement(&self.db, &sql, vec![name.into()]))
                .one(&self.db)
                .await?,
        )
    }

    /// Every account, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM account a ORDER BY a.name");
        Ok(
            AccountRow::find_by_statement(statement(&self.db, &sql, vec![]))
                .all(&self.db)
                .await?
                .into_iter()
                .map(AccountRow::into_account)
                .collect(),
        )
    }

    /// Gives an admin a lower role unless no other admin would remain,
    /// in one statement, so that two admins demoting each other at once
    /// cannot both succeed (SQLite runs writes one at a time; PostgreSQL
    /// evaluates the count per statement, which narrows the race to the
    /// same instant). `Ok(false)` when refused.
    pub async fn demote_admin(&self, name: &str, role: Role) -> Result<bool, StoreError> {
        let sql = "UPDATE account SET role = ? WHERE name = ? AND role = 'admin' \
                   AND (SELECT COUNT(*) FROM account WHERE role = 'admin') > 1";
        Ok(self
            .execute(sql, vec![role.label().into(), name.into()])
            .await?
            > 0)
    }

    /// Whether an API token still exists.
    pub async fn token_exists(&self, id: &str) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) AS n FROM api_token WHERE id = ?";
        Ok(
            Count::find_by_statement(statement(&self.db, sql, vec![id.into()]))
                .one(&self.db)
                .await?
                .is_some_and(|c| c.n > 0),
        )
    }

    /// Changes an account's role; `Ok(false)` if there is no such account.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<bool, StoreError> {
        let sql = "UPDATE account SET role = ? WHERE name = ?";
        Ok(self
            .execute(sql, vec![role.label().into(), name.into()])
            .await?
            > 0)
    }

    /// Replaces an account's password and ends all of its sessions, so a
    /// stolen session does not outlive the password change.
    pub async fn set_password(
        &self,
        name: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE account SET password_hash = ?, password_changed_at = ? WHERE name = ?";
        let changed = self
            .execute(sql, vec![password_hash.into(), now_ms.into(), name.into()])
            .await?
            > 0;
        if changed {
            let sql = "DELETE FROM login_session WHERE account_id IN \
                       (SELECT id FROM account WHERE name = ?)";
            self.execute(sql, vec![name.into()]).await?;
        }
        Ok(changed)
    }

    /// Deletes an account with its sessions and tokens, unless it is the
    /// last admin (checked in the same statement as the delete).
    /// `Ok(false)` when refused or absent.
    pub async fn remove_account(&self, name: &str) -> Result<bool, StoreError> {
        let Some(account) = self.account(name).await? else {
            return Ok(false);
        };
        let sql = "DELETE FROM account WHERE id = ? AND (role <> 'admin' \
                   OR (SELECT COUNT(*) FROM account WHERE role = 'admin') > 1)";
        if self.execute(sql, vec![account.id.into()]).await? == 0 {
            return Ok(false);
        }
        // Foreign keys cascade on PostgreSQL; SQLite enforces them only
        // when asked per connection, so the children are deleted here too.
        for sql in [
            "DELETE FROM login_session WHERE account_id = ?",
            "DELETE FROM api_token WHERE account_id = ?",
        ] {
            self.execute(sql, vec![account.id.into()]).await?;
        }
        Ok(true)
    }

    pub async fn add_session(
        &self,
        id_hash: &str,
        account_id: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "INSERT INTO login_session (id_hash, account_id, created_at, last_seen_at) \
                   VALUES (?, ?, ?, ?)";
        let values = vec![
            id_hash.into(),
            account_id.into(),
            now_ms.into(),
            now_ms.into(),
        ];
        self.execute(sql, values).await.map(drop)
    }

    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT s.id_hash AS key, s.created_at AS key_created_at, \
             s.last_seen_at AS key_seen_at, {ACCOUNT_COLUMNS} FROM login_session s \
             JOIN account a ON a.id = s.account_id WHERE s.id_hash = ?"
        );
        Ok(
            Joined::find_by_statement(statement(&self.db, &sql, vec![id_hash.into()]))
                .one(&self.db)
                .await?
                .map(|j| {
                    let (_, created_at, seen, account) = j.split();
                    SessionRow {
                        created_at,
                        last_seen_at: seen.unwrap_or(created_at),
                        account,
                    }
                }),
        )
    }

    pub async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let sql = "UPDATE login_session SET last_seen_at = ? WHERE id_hash = ?";
        self.execute(sql, vec![now_ms.into(), id_hash.into()])
            .await
            .map(drop)
    }

    pub async fn remove_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM login_session WHERE id_hash = ?";
        Ok(self.execute(sql, vec![id_hash.into()]).await? > 0)
    }

    /// Deletes sessions idle since before `idle_before` or created before
    /// `created_before`.
    pub async fn prune_sessions(
        &self,
        idle_before: i64,
        created_before: i64,
    ) -> Result<u64, StoreError> {
        let sql = "DELETE FROM login_session WHERE last_seen_at < ? OR created_at < ?";
        self.execute(sql, vec![idle_before.into(), created_before.into()])
            .await
    }

    pub async fn add_token(
        &self,
        id: &str,
        account_id: i64,
        label: &str,
        token_hash: &str,
        now_ms: i64,
        max_per_account: usize,
    ) -> Result<bool, StoreError> {
        // The count and the insert are one statement, so that requests
        // racing each other cannot each see room for one more.
        let sql = "INSERT INTO api_token (id, account_id, label, token_hash, created_at) \
                   SELECT ?, ?, ?, ?, ? \
                   WHERE (SELECT COUNT(*) FROM api_token WHERE account_id = ?) < ?";
        let values = vec![
            id.into(),
            account_id.into(),
            label.into(),
            token_hash.into(),
            now_ms.into(),
            account_id.into(),
            i64::try_from(max_per_account).unwrap_or(i64::MAX).into(),
        ];
        Ok(self.execute(sql, values).await? > 0)
    }

    /// The token with this hash: its id, when it was last used, and its
    /// account.
    pub async fn token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, Option<i64>, AccountRow)>, StoreError> {
        let sql = format!(
            "SELECT t.id AS key, t.created_at AS key_created_at, \
             t.last_used_at AS key_seen_at, {ACCOUNT_COLUMNS} FROM api_token t \
             JOIN account a ON a.id = t.account_id WHERE t.token_hash = ?"
        );
        Ok(
            Joined::find_by_statement(statement(&self.db, &sql, vec![token_hash.into()]))
                .one(&self.db)
                .await?
                .map(|j| {
                    let (id, _, last_used, account) = j.split();
                    (id, last_used, account)
                }),
        )
    }

    pub async fn touch_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        let sql = "UPDATE api_token SET last_used_at = ? WHERE id = ?";
        self.execute(sql, vec![now_ms.into(), id.into()])
            .await
            .map(drop)
    }

    /// An account's tokens, newest first.
    pub async fn tokens(&self, account_id: i64) -> Result<Vec<ApiToken>, StoreError> {
        let sql = "SELECT id, label, created_at, last_used_at FROM api_token \
                   WHERE account_id = ? ORDER BY created_at DESC, id DESC";
        Ok(
            ApiTokenRow::find_by_statement(statement(&self.db, sql, vec![account_id.into()]))
                .all(&self.db)
                .await?
                .into_iter()
                .map(|t| ApiToken {
                    id: t.id,
                    label: t.label,
                    created_at: t.created_at,
                    last_used_at: t.last_used_at,
                })
                .collect(),
        )
    }

    /// Revokes one of an account's tokens; `Ok(false)` if it has none by
    /// that id.
    pub async fn remove_token(&self, account_id: i64, id: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM api_token WHERE account_id = ? AND id = ?";
        Ok(self
            .execute(sql, vec![account_id.into(), id.into()])
            .await?
            > 0)
    }

    pub async fn append_audit(&self, e: NewAuditEvent) -> Result<(), StoreError> {
        let sql = "INSERT INTO audit_event (at, actor, action, target, detail, ip) \
                   VALUES (?, ?, ?, ?, ?, ?)";
        let values = vec![
            e.at.into(),
            e.actor.into(),
            e.action.into(),
            e.target.into(),
            e.detail.into(),
            e.ip.into(),
        ];
        self.execute(sql, values).await.map(drop)
    }

    /// The newest audit events, older than event `before` when given.
    pub async fn audit(
        &self,
        limit: u64,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = "SELECT id, at, actor, action, target, detail, ip FROM audit_event \
                   WHERE id < ? ORDER BY id DESC LIMIT ?";
        let values = vec![before.unwrap_or(i64::MAX).into(), (limit as i64).into()];
        Ok(
            AuditRow::find_by_statement(statement(&self.db, sql, values))
                .all(&self.db)
                .await?
                .into_iter()
                .map(|r| AuditEntry {
                    id: r.id,
                    at: r.at,
                    actor: r.actor,
                    action: r.action,
                    target: r.target,
                    detail: r.detail,
                    ip: r.ip,
                })
                .collect(),
        )
    }

    /// Sets or clears a device's label; `Ok(false)` if there is no such
    /// device.
    pub async fn set_label(&self, device: &str, label: Option<&str>) -> Result<bool, StoreError> {
        let sql = "UPDATE device SET label = ? WHERE name = ?";
        Ok(self
            .execute(sql, vec![label.map(str::to_owned).into(), device.into()])
            .await?
            > 0)
    }
}
