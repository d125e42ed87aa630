//! The device registry: creating devices with a secret, checking the
//! credentials a device presents at CONNECT, and enabling or disabling it.
//!
//! A secret is 32 random alphanumeric characters (about 190 bits), shown
//! once when it is made and stored only as its SHA-256. Because secrets are
//! random rather than chosen by people, a fast hash is enough: nobody can
//! guess one from its hash, and checking a login stays cheap when
//! thousands of devices reconnect at once. (Operator passwords, which
//! people choose, need a slow hash; that is a different table.)

use rand::distr::{Alphanumeric, SampleString};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, Statement, TransactionTrait,
};
use sha2::{Digest, Sha256};

use super::entity::device;
use super::StoreError;
use crate::names::valid_name;

/// Length of a device secret.
const SECRET_LEN: usize = 32;

/// A device that has just been given a secret. The secret exists only here:
/// show it to the operator once.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("id", &self.id)
            .field("secret", &"***")
            .finish()
    }
}

/// Why a device could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid device id {0:?}: use 1-64 characters from A-Z a-z 0-9 _ - . :")]
    InvalidId(String),
    #[error("device {0} already exists")]
    Exists(String),
    #[error("no device {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for RegistryError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

/// What the registry says about a login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    /// The credentials belong to this device.
    Device(String),
    /// The device exists but was registered without a secret (open
    /// registration); it may connect only while that mode is on.
    Unsecured(String),
    /// No device has these credentials.
    Unknown,
    /// The device exists but the secret is wrong.
    BadSecret,
    /// The device exists and the secret is right, but it is disabled. It
    /// carries the device's id, which a ThingsBoard-style login (the secret
    /// as user name) does not give.
    Disabled(String),
    /// The device was deleted (its readings kept); it is refused until an
    /// operator adds it again.
    Removed(String),
}

/// The SHA-256 of a secret, in lower-case hex.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates device `id` with a new secret. An id that exists already, with
/// a secret or without, is refused: [`rotate`] gives an existing device a
/// (new) secret.
pub async fn add(
    db: &DatabaseConnection,
    id: &str,
    now_ms: i64,
) -> Result<NewDevice, RegistryError> {
    if !valid_name(id) {
        return Err(RegistryError::InvalidId(id.to_owned()));
    }
    let secret = Alphanumeric.sample_string(&mut rand::rng(), SECRET_LEN);
    let hash = hash_secret(&secret);
    // An existing device is never claimed by adding it again: one that
    // registered itself openly would be refused at its next login, for
    // good, by an operator who only meant to add a new one. Giving it a
    // secret is a rotation, asked for by name.
    // A service account of the same name would shadow the device at login.
    if super::services::get(db, id).await?.is_some() {
        return Err(RegistryError::Exists(format!(
            "{id} (as a service account)"
        )));
    }
    match find(db, id).await? {
        // A device deleted with its readings kept comes back with them.
        Some(d) if d.removed_at.is_some() => {
            let mut d = d.into_active_model();
            d.secret_hash = Set(Some(hash));
            d.disabled = Set(false);
            d.removed_at = Set(None);
            d.label = Set(None);
            d.update(db).await?;
            return Ok(NewDevice {
                id: id.to_owned(),
                secret,
            });
        }
        Some(_) => return Err(RegistryError::Exists(id.to_owned())),
        None => {}
    }
    let inserted = device::ActiveModel {
        id: NotSet,
        name: Set(id.to_owned()),
        first_seen: Set(now_ms),
        secret_hash: Set(Some(hash)),
        disabled: Set(false),
        label: NotSet,
        removed_at: NotSet,
    }
    .insert(db)
    .await;
    if let Err(e) = inserted {
        // Two adds of one name at once: the unique index refused the
        // second.
        if find(db, id).await?.is_some() {
            return Err(RegistryError::Exists(id.to_owned()));
        }
        return Err(e.into());
    }
    Ok(NewDevice {
        id: id.to_owned(),
        secret,
    })
}

/// Replaces the secret of an existing device. Its connected sessions keep
/// running; the old secret stops working at the next CONNECT.
pub async fn rotate(db: &DatabaseConnection, id: &str) -> Result<NewDevice, RegistryError> {
    let d = find_present(db, id).await?;
    let secret = Alphanumeric.sample_string(&mut rand::rng(), SECRET_LEN);
    let mut d = d.into_active_model();
    d.secret_hash = Set(Some(hash_secret(&secret)));
    d.update(db).await?;
    Ok(NewDevice {
        id: id.to_owned(),
        secret,
    })
}

/// Enables or disables a device. A disabled device's logins are refused;
/// its stored readings stay.
pub async fn set_disabled(
    db: &DatabaseConnection,
    id: &str,
    disabled: bool,
) -> Result<(), RegistryError> {
    let d = find_present(db, id).await?;
    let mut d = d.into_active_model();
    d.disabled = Set(disabled);
    d.update(db).await?;
    Ok(())
}

/// Checks a login. With a password, the user name is the device id and the
/// password its secret. Without one, the user name is the secret itself
/// (ThingsBoard's access-token convention).
pub async fn login(
    db: &DatabaseConnection,
    user: &str,
    password: Option<&str>,
) -> Result<Login, StoreError> {
    let (found, presented) = match password {
        Some(p) if !p.is_empty() => (find(db, user).await?, hash_secret(p)),
        _ => {
            let hash = hash_secret(user);
            let found = device::Entity::find()
                .filter(device::Column::SecretHash.eq(hash.clone()))
                .one(db)
                .await?;
            (found, hash)
        }
    };
    let Some(d) = found else {
        return Ok(Login::Unknown);
    };
    Ok(match d.secret_hash {
        _ if d.removed_at.is_some() => Login::Removed(d.name),
        Some(stored) if stored != presented => Login::BadSecret,
        _ if d.disabled => Login::Disabled(d.name),
        None => Login::Unsecured(d.name),
        Some(_) => Login::Device(d.name),
    })
}

/// Whether device `id` exists and has a secret, so that nobody may use its
/// name without it, even under open registration.
/// A service account's name counts as claimed too.
pub async fn is_secured(db: &DatabaseConnection, id: &str) -> Result<bool, StoreError> {
    let device = find(db, id)
        .await?
        .is_some_and(|d| d.secret_hash.is_some() || d.disabled || d.removed_at.is_some());
    Ok(device || super::services::get(db, id).await?.is_some())
}

/// The device named `id`, unless it is unknown or deleted.
async fn find_present(db: &DatabaseConnection, id: &str) -> Result<device::Model, RegistryError> {
    find(db, id)
        .await?
        .filter(|d| d.removed_at.is_none())
        .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
}

/// Deletes device `id`. With `keep_data`, its readings, rollups and
/// series stay (exportable, and back on its page if the id is added
/// again) while its secret, label, commands and desired state go;
/// otherwise everything
/// of it goes, in one transaction. Either way the broker refuses it from
/// now on; ending its open sessions is the caller's part.
pub async fn delete(
    db: &DatabaseConnection,
    id: &str,
    keep_data: bool,
    now_ms: i64,
) -> Result<(), RegistryError> {
    let d = find_present(db, id).await?;
    let txn = db.begin().await?;
    let backend = db.get_database_backend();
    let by_device = |sql: String| Statement::from_sql_and_values(backend, sql, [d.id.into()]);
    let p = super::placeholder(backend, 1);
    for table in ["command", "desired", "mqtt_session"] {
        txn.execute_raw(by_device(format!(
            "DELETE FROM {table} WHERE device_id = {p}"
        )))
        .await?;
    }
    if keep_data {
        let mut kept = d.into_active_model();
        kept.secret_hash = Set(None);
        kept.label = Set(None);
        kept.disabled = Set(true);
        kept.removed_at = Set(Some(now_ms));
        kept.update(&txn).await?;
    } else {
        let series = format!("SELECT id FROM series WHERE device_id = {p}");
        for table in ["reading", "rollup_1m", "rollup_15m"] {
            txn.execute_raw(by_device(format!(
                "DELETE FROM {table} WHERE series_id IN ({series})"
            )))
            .await?;
        }
        txn.execute_raw(by_device(format!(
            "DELETE FROM series WHERE device_id = {p}"
        )))
        .await?;
        txn.execute_raw(by_device(format!("DELETE FROM device WHERE id = {p}")))
            .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// The device named `id`, if any.
pub(super) async fn find(
    db: &DatabaseConnection,
    id: &str,
) -> Result<Option<device::Model>, StoreError> {
    Ok(device::Entity::find()
        .filter(device::Column::Name.eq(id))
        .one(db)
        .await?)
}

/// What `sightline device` was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    Add,
    Rotate,
    Disable,
    Enable,
}

/// `sightline device`: does `action` to device `id` and prints the
/// outcome, with the new secret (shown only now) and how to connect.
pub async fn cli(
    store: &super::Store,
    action: DeviceAction,
    id: &str,
) -> Result<(), RegistryError> {
    let created = match action {
        DeviceAction::Add => store.add_device(id, crate::clock::now_ms()).await?,
        DeviceAction::Rotate => store.rotate_secret(id).await?,
        DeviceAction::Disable | DeviceAction::Enable => {
            let disable = action == DeviceAction::Disable;
            store.set_disabled(id, disable).await?;
            println!(
                "device {id} {}",
                if disable { "disabled" } else { "enabled" }
            );
            return Ok(());
        }
    };
    println!(
        "device: {}\nsecret: {}\n\n\
         The secret is shown only now; it is stored as a hash. Connect with\n  \
         mosquitto_pub -u {} -P <secret> -t sensor/{} -m '{{\"temp\":21}}'\n\
         or, ThingsBoard style, with the secret as the user name:\n  \
         mosquitto_pub -u <secret> -t v1/devices/me/telemetry -m '{{\"temp\":21}}'",
        created.id, created.secret, created.id, created.id
    );
    Ok(())
}
