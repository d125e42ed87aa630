//! Desired states in the database: one row per device, rewritten with a
//! higher version at each change, and marked when the device acknowledges
//! the version it was sent. A removed state stays as a row with an empty
//! payload, so that versions keep counting up: an acknowledgement of an
//! old version can never be taken for a new one.

use app::model::DesiredState;
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Statement, Value};

use super::{placeholder, StoreError};

#[derive(Debug, FromQueryResult)]
struct Row {
    device: String,
    payload: String,
    version: i64,
    set_at: i64,
    set_by: String,
    acked_version: Option<i64>,
    acked_at: Option<i64>,
}

impl Row {
    fn into_state(self) -> DesiredState {
        // A payload the server wrote is JSON; one from a hand-edited
        // database is shown as text rather than lost.
        let payload =
            serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::String(self.payload));
        DesiredState {
            device: self.device,
            payload,
            version: self.version,
            set_at: self.set_at,
            set_by: self.set_by,
            acked_version: self.acked_version,
            acked_at: self.acked_at,
        }
    }
}

/// A device's desired state, if it has one and is not deleted.
pub async fn get(
    db: &DatabaseConnection,
    device: &str,
) -> Result<Option<DesiredState>, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT d.name AS device, s.payload, s.version, s.set_at, s.set_by, s.acked_version, \
         s.acked_at FROM desired s JOIN device d ON d.id = s.device_id \
         WHERE d.name = {} AND d.removed_at IS NULL AND s.payload <> ''",
        placeholder(backend, 1)
    );
    Ok(Row::find_by_statement(Statement::from_sql_and_values(
        backend,
        sql,
        [device.into()],
    ))
    .one(db)
    .await?
    .map(Row::into_state))
}

/// Sets a device's desired state to `payload` (JSON text), one version
/// above the last, keeping the record of the last acknowledgement. Returns
/// the new state, or `None` if the device does not exist.
pub async fn set(
    db: &DatabaseConnection,
    device: &str,
    payload: &str,
    by: &str,
    at: i64,
) -> Result<Option<DesiredState>, StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=4).map(|n| placeholder(backend, n)).collect();
    // The device id comes from its name in the same statement, so a state
    // can never point at a device that was not there. SQLite needs the
    // WHERE clause to tell the SELECT's end from ON CONFLICT.
    let sql = format!(
        "INSERT INTO desired (device_id, payload, version, set_at, set_by) \
         SELECT d.id, {}, 1, {}, {} FROM device d WHERE d.name = {} AND d.removed_at IS NULL \
         ON CONFLICT (device_id) DO UPDATE SET payload = excluded.payload, \
         version = desired.version + 1, set_at = excluded.set_at, set_by = excluded.set_by",
        p[0], p[1], p[2], p[3]
    );
    let values: Vec<Value> = vec![payload.into(), at.into(), by.into(), device.into()];
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    get(db, device).await
}

/// Removes a device's desired state, one version up; false if it had
/// none.
pub async fn clear(db: &DatabaseConnection, device: &str, at: i64) -> Result<bool, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "UPDATE desired SET payload = '', version = version + 1, set_at = {} \
         WHERE payload <> '' AND device_id IN (SELECT id FROM device WHERE name = {})",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    let values: Vec<Value> = vec![at.into(), device.into()];
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Records that the device acknowledged `version` at `at`. An
/// acknowledgement of a version that has since been replaced says nothing
/// about the current one, and is not recorded; false then.
pub async fn acknowledge(
    db: &DatabaseConnection,
    device: &str,
    version: i64,
    at: i64,
) -> Result<bool, StoreError> {
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=4).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "UPDATE desired SET acked_version = {}, acked_at = {} \
         WHERE device_id IN (SELECT id FROM device WHERE name = {}) AND version = {}",
        p[0], p[1], p[2], p[3]
    );
    let values: Vec<Value> = vec![version.into(), at.into(), device.into(), version.into()];
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(done.rows_affected() > 0)
}
