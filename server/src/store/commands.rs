//! Commands in the database: one row per command, rewritten whole at each
//! step of its life, so the row always matches what the server last knew.

use app::model::{Command, CommandState};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Statement, Value};

use super::{placeholder, StoreError};

/// The columns a command is read back with, in one place so every query
/// agrees with [`Row`].
const SELECT: &str = "SELECT c.id, d.name AS device, c.name, c.params, c.two_way, c.persistent, \
     c.timeout_ms, c.ttl_ms, c.state, c.created_at, c.sent_at, c.delivered_at, c.completed_at, \
     c.response, c.error FROM command c JOIN device d ON d.id = c.device_id";

#[derive(Debug, FromQueryResult)]
struct Row {
    id: String,
    device: String,
    name: String,
    params: String,
    two_way: bool,
    persistent: bool,
    timeout_ms: i64,
    ttl_ms: i64,
    state: String,
    created_at: i64,
    sent_at: Option<i64>,
    delivered_at: Option<i64>,
    completed_at: Option<i64>,
    response: Option<String>,
    error: Option<String>,
}

impl Row {
    /// A row the server wrote itself; a value it cannot read back (from a
    /// hand-edited database) is shown as text rather than lost.
    fn into_command(self) -> Command {
        let json =
            |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Command {
            state: CommandState::from_label(&self.state).unwrap_or(CommandState::Failed),
            id: self.id,
            device: self.device,
            name: self.name,
            params: json(self.params),
            two_way: self.two_way,
            persistent: self.persistent,
            timeout_ms: self.timeout_ms,
            ttl_ms: self.ttl_ms,
            created_at: self.created_at,
            sent_at: self.sent_at,
            delivered_at: self.delivered_at,
            completed_at: self.completed_at,
            response: self.response.map(json),
            error: self.error,
        }
    }
}

/// Inserts `command`, or rewrites its changing parts if it exists (a
/// command becomes persistent when the persistent MQTT session it was sent
/// to ends). Returns false if its
/// device does not exist (any more).
pub async fn save(db: &DatabaseConnection, c: &Command) -> Result<bool, StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=15).map(|n| placeholder(backend, n)).collect();
    // The device id comes from its name in the same statement, so a command
    // can never point at a device that was not there. SQLite needs the
    // WHERE clause to tell the SELECT's end from ON CONFLICT.
    let sql = format!(
        "INSERT INTO command (id, device_id, name, params, two_way, persistent, timeout_ms, \
         ttl_ms, state, created_at, sent_at, delivered_at, completed_at, response, error) \
         SELECT {}, d.id, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {} \
         FROM device d WHERE d.name = {} \
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, sent_at = excluded.sent_at, \
         persistent = excluded.persistent, \
         delivered_at = excluded.delivered_at, completed_at = excluded.completed_at, \
         response = excluded.response, error = excluded.error",
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        p[8],
        p[9],
        p[10],
        p[11],
        p[12],
        p[13],
        p[14],
    );
    let values: Vec<Value> = vec![
        c.id.clone().into(),
        c.name.clone().into(),
        c.params.to_string().into(),
        c.two_way.into(),
        c.persistent.into(),
        c.timeout_ms.into(),
        c.ttl_ms.into(),
        c.state.label().into(),
        c.created_at.into(),
        c.sent_at.into(),
        c.delivered_at.into(),
        c.completed_at.into(),
        c.response.as_ref().map(|r| r.to_string()).into(),
        c.error.clone().into(),
        c.device.clone().into(),
    ];
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A device's newest commands, newest first.
pub async fn recent(
    db: &DatabaseConnection,
    device: &str,
    limit: u64,
) -> Result<Vec<Command>, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "{SELECT} WHERE d.name = {} ORDER BY c.created_at DESC, c.id DESC LIMIT {}",
        placeholder(backend, 1),
        placeholder(backend, 2),
    );
    let values: Vec<Value> = vec![device.into(), (limit as i64).into()];
    all(db, sql, values).await
}

/// The commands a query built on [`SELECT`] finds.
async fn all(
    db: &DatabaseConnection,
    sql: String,
    values: Vec<Value>,
) -> Result<Vec<Command>, StoreError> {
    let backend = db.get_database_backend();
    Ok(
        Row::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
            .all(db)
            .await?
            .into_iter()
            .map(Row::into_command)
            .collect(),
    )
}

/// One command by id.
pub async fn get(db: &DatabaseConnection, id: &str) -> Result<Option<Command>, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!("{SELECT} WHERE c.id = {}", placeholder(backend, 1));
    Ok(
        Row::find_by_statement(Statement::from_sql_and_values(backend, sql, [id.into()]))
            .one(db)
            .await?
            .map(Row::into_command),
    )
}

/// Every command that has not reached a final state, oldest first, for the
/// server to pick up again at start; or only `device`'s.
pub async fn unfinished(
    db: &DatabaseConnection,
    device: Option<&str>,
) -> Result<Vec<Command>, StoreError> {
    let backend = db.get_database_backend();
    let (of_device, values): (String, Vec<Value>) = match device {
        Some(d) => (
            format!(" AND d.name = {}", placeholder(backend, 1)),
            vec![d.into()],
        ),
        None => (String::new(), Vec::new()),
    };
    let sql = format!(
        "{SELECT} WHERE c.state IN ('queued', 'sent', 'delivered'){of_device} \
         ORDER BY c.created_at, c.id"
    );
    let mut list = all(db, sql, values).await?;
    list.retain(|c| !c.is_final());
    Ok(list)
}

/// Writes `c`'s new state only if its stored state is still `was`, so
/// that a sweep never overwrites a step an instance took meanwhile.
/// Returns whether it was written.
pub async fn replace_if(
    db: &DatabaseConnection,
    c: &Command,
    was: CommandState,
) -> Result<bool, StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=5).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "UPDATE command SET state = {}, completed_at = {}, error = {} \
         WHERE id = {} AND state = {}",
        p[0], p[1], p[2], p[3], p[4]
    );
    let values: Vec<Value> = vec![
        c.state.label().into(),
        c.completed_at.into(),
        c.error.clone().into(),
        c.id.clone().into(),
        was.label().into(),
    ];
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How many commands wait (queued) for `device`.
pub async fn waiting(db: &DatabaseConnection, device: &str) -> Result<usize, StoreError> {
    #[derive(Debug, FromQueryResult)]
    struct Count {
        n: i64,
    }
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT COUNT(*) AS n FROM command c JOIN device d ON d.id = c.device_id \
         WHERE c.state = 'queued' AND d.name = {}",
        placeholder(backend, 1)
    );
    let count = Count::find_by_statement(Statement::from_sql_and_values(
        backend,
        sql,
        [device.into()],
    ))
    .one(db)
    .await?;
    Ok(count.map_or(0, |c| usize::try_from(c.n).unwrap_or(0)))
}
