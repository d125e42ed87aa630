//! Persistent MQTT sessions in the database: what survives a device's
//! connection (and a server restart) when it connects without a clean
//! session. One row per (device, client id), at most a few per device, kept
//! until the session expires.

use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Statement, Value};

use super::{placeholder, StoreError};
use crate::acl;

/// What a persistent session keeps between connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Filters as the device wrote them, with the QoS granted (0 or 1).
    pub subscriptions: Vec<(String, u8)>,
    /// Commands sent at QoS 1 and not acknowledged: packet id and command
    /// id, so that they go out again under the same packet id, flagged DUP.
    pub in_flight: Vec<(u16, String)>,
    /// Packet ids of the newest QoS 1 and 2 publishes the device sent and
    /// whose readings are committed, each with the message's fingerprint:
    /// the same message under the same id again, with DUP set, is a
    /// retransmission, acknowledged and not stored twice.
    pub received: Vec<(u16, u64)>,
}

#[derive(Debug, FromQueryResult)]
struct Row {
    subscriptions: String,
    in_flight: String,
    received: String,
}

impl Row {
    fn into_state(self) -> SessionState {
        // Written by the server as JSON; a row it cannot read resumes as an
        // empty session rather than failing the device's login.
        SessionState {
            subscriptions: serde_json::from_str(&self.subscriptions).unwrap_or_default(),
            in_flight: serde_json::from_str(&self.in_flight).unwrap_or_default(),
            received: serde_json::from_str(&self.received).unwrap_or_default(),
        }
    }
}

#[derive(Debug, FromQueryResult)]
struct Kept {
    client_id: String,
    ended_at: Option<i64>,
}

/// The SQL condition for a session that has not expired at the time in
/// placeholder `now`: connected, or ended less than its expiry ago.
fn alive(now: &str) -> String {
    format!("(s.ended_at IS NULL OR s.ended_at + s.expiry_secs * 1000 > {now})")
}

#[derive(Debug, FromQueryResult)]
struct Found {
    subscriptions: String,
    in_flight: String,
    received: String,
    alive: bool,
}

/// The stored session of `client_id` of `device` as a new connection finds
/// it: with `resume`, its state if it has not expired at `now`; otherwise
/// (a clean start) nothing. A session not taken up is deleted. Costs one
/// read when there is nothing stored, which is the common case.
pub async fn take(
    db: &DatabaseConnection,
    device: &str,
    client_id: &str,
    now: i64,
    resume: bool,
) -> Result<Option<SessionState>, StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=3).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "SELECT s.subscriptions, s.in_flight, s.received, {} AS alive FROM mqtt_session s \
         JOIN device d ON d.id = s.device_id WHERE d.name = {} AND s.client_id = {}",
        alive(&p[0]),
        p[1],
        p[2]
    );
    let values: Vec<Value> = vec![now.into(), device.into(), client_id.into()];
    let Some(found) =
        Found::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
            .one(db)
            .await?
    else {
        return Ok(None);
    };
    if !(resume && found.alive) {
        discard(db, device, client_id, None).await?;
        return Ok(None);
    }
    let row = Row {
        subscriptions: found.subscriptions,
        in_flight: found.in_flight,
        received: found.received,
    };
    Ok(Some(row.into_state()))
}

/// Marks the session of `client_id` of `device` connected and held by
/// `owner`, to be kept for `expiry_secs` after it ends; unless `resumed`,
/// it starts empty. A device keeps at most `max_per_device` sessions:
/// beyond that its longest-ended ones are dropped, so a device that
/// invents client ids cannot fill the table. Returns how many were
/// dropped.
pub async fn open(
    db: &DatabaseConnection,
    device: &str,
    client_id: &str,
    (expiry_secs, owner): (u32, i64),
    resumed: bool,
    max_per_device: usize,
) -> Result<usize, StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=3).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "SELECT s.client_id, s.ended_at FROM mqtt_session s \
         JOIN device d ON d.id = s.device_id WHERE d.name = {}",
        p[0]
    );
    let mut kept = Kept::find_by_statement(Statement::from_sql_and_values(
        backend,
        sql,
        [device.into()],
    ))
    .all(db)
    .await?;
    let mut dropped = 0;
    if !kept.iter().any(|k| k.client_id == client_id) {
        // Connected sessions (no end) sort last and are never dropped: the
        // edge already bounds them by connections per device.
        kept.retain(|k| k.ended_at.is_some());
        kept.sort_by_key(|k| k.ended_at);
        let stored = kept.len();
        for old in kept
            .iter()
            .take((stored + 1).saturating_sub(max_per_device.max(1)))
        {
            discard(db, device, &old.client_id, None).await?;
            dropped += 1;
        }
    }
    // A session not resumed starts empty even if a row was left (its read
    // failed, or it raced this one).
    let reset = if resumed {
        ""
    } else {
        ", subscriptions = '[]', in_flight = '[]', received = '[]'"
    };
    let p: Vec<String> = (1..=4).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "INSERT INTO mqtt_session (device_id, client_id, owner, expiry_secs, ended_at, \
         subscriptions, in_flight, received) \
         SELECT d.id, {}, {}, {}, NULL, '[]', '[]', '[]' FROM device d WHERE d.name = {} \
         ON CONFLICT (device_id, client_id) DO UPDATE SET owner = excluded.owner, \
         expiry_secs = excluded.expiry_secs, ended_at = NULL{reset}",
        p[0], p[1], p[2], p[3]
    );
    let values: Vec<Value> = vec![
        client_id.into(),
        owner.into(),
        i64::from(expiry_secs).into(),
        device.into(),
    ];
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(dropped)
}

/// Writes what the session holds now, if `owner` still holds it (any
/// holder when `None`); with `ended_at`, the session's connection ended
/// then, and its expiry counts from there.
pub async fn save(
    db: &DatabaseConnection,
    device: &str,
    client_id: &str,
    state: &SessionState,
    owner: Option<i64>,
    ended_at: Option<i64>,
) -> Result<(), StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=7).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "UPDATE mqtt_session SET subscriptions = {}, in_flight = {}, received = {}, ended_at = {} \
         WHERE client_id = {} AND device_id IN (SELECT id FROM device WHERE name = {}) \
         AND owner = COALESCE({}, owner)",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    );
    let json = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "[]".to_owned());
    let values: Vec<Value> = vec![
        json(serde_json::to_string(&state.subscriptions)).into(),
        json(serde_json::to_string(&state.in_flight)).into(),
        json(serde_json::to_string(&state.received)).into(),
        ended_at.into(),
        client_id.into(),
        device.into(),
        owner.into(),
    ];
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(())
}

/// Forgets the session of `client_id` of `device` (if `owner` still holds
/// it, when given): it connected with a clean session, expired, or was
/// resumed by a connection that does not keep it.
pub async fn discard(
    db: &DatabaseConnection,
    device: &str,
    client_id: &str,
    owner: Option<i64>,
) -> Result<(), StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=3).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "DELETE FROM mqtt_session WHERE client_id = {} \
         AND device_id IN (SELECT id FROM device WHERE name = {}) AND owner = COALESCE({}, owner)",
        p[0], p[1], p[2]
    );
    let values: Vec<Value> = vec![client_id.into(), device.into(), owner.into()];
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(())
}

/// Whether `device` has a session, connected or not expired at `now`,
/// that subscribed to its commands: a command to it then waits for it, as
/// MQTT keeps messages for a persistent session's subscriptions.
pub async fn keeps_commands(
    db: &DatabaseConnection,
    device: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT s.subscriptions, s.in_flight, s.received FROM mqtt_session s \
         JOIN device d ON d.id = s.device_id WHERE d.name = {} AND {}",
        placeholder(backend, 1),
        alive(&placeholder(backend, 2))
    );
    let values: Vec<Value> = vec![device.into(), now.into()];
    let rows = Row::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
        .all(db)
        .await?;
    Ok(rows.into_iter().any(|row| {
        row.into_state()
            .subscriptions
            .iter()
            .any(|(filter, _)| acl::command_route(device, filter).any())
    }))
}

/// Deletes every session expired at `now`; returns how many.
pub async fn purge(db: &DatabaseConnection, now: i64) -> Result<u64, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "DELETE FROM mqtt_session WHERE ended_at IS NOT NULL \
         AND ended_at + expiry_secs * 1000 <= {}",
        placeholder(backend, 1)
    );
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, [now.into()]))
        .await?;
    Ok(done.rows_affected())
}

/// Ends every session still marked connected at `now`: on a single server
/// at start, none can be, since its connections died with the last run.
pub async fn end_all(db: &DatabaseConnection, now: i64) -> Result<(), StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "UPDATE mqtt_session SET ended_at = {} WHERE ended_at IS NULL",
        placeholder(backend, 1)
    );
    db.execute_raw(Statement::from_sql_and_values(backend, sql, [now.into()]))
        .await?;
    Ok(())
}
