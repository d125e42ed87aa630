//! Service accounts in the database: MQTT logins for tools that read the
//! stream of readings. A secret is random, shown once and stored as its
//! SHA-256, exactly as a device's (see `registry`).

use app::model::{CreatedServiceAccount, ServiceAccount};
use rand::distr::{Alphanumeric, SampleString};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Statement, Value};

use super::registry::hash_secret;
use super::{placeholder, StoreError};
use crate::acl;
use crate::names::valid_name;

/// Length of a service account's secret, as a device's.
const SECRET_LEN: usize = 32;

/// The most filters one service account may be granted.
pub const MAX_GRANTS: usize = 32;

/// Why a service account could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid service account name {0:?}: use 1-64 characters from A-Z a-z 0-9 _ - . :")]
    InvalidName(String),
    #[error("{0:?} is a device's name; a service account needs a name of its own")]
    DeviceName(String),
    #[error("invalid grant {0:?}: grant sensor/#, sensor/+ or sensor/<device id>")]
    InvalidGrant(String),
    #[error("invalid command grant {0:?}: grant command/+ or command/<device id>")]
    InvalidCommandGrant(String),
    #[error("grant between 1 and {MAX_GRANTS} filters and command topics in all")]
    GrantCount,
    #[error("service account {0} already exists")]
    Exists(String),
    #[error("no service account {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

#[derive(Debug, FromQueryResult)]
struct Row {
    name: String,
    subscribe: String,
    publish: String,
    created_at: i64,
    created_by: String,
}

impl Row {
    fn into_account(self) -> ServiceAccount {
        ServiceAccount {
            name: self.name,
            // Written by the server as a JSON array; anything else grants
            // nothing.
            subscribe: serde_json::from_str(&self.subscribe).unwrap_or_default(),
            publish: serde_json::from_str(&self.publish).unwrap_or_default(),
            created_at: self.created_at,
            created_by: self.created_by,
        }
    }
}

/// What a service account may do: the feed filters it may subscribe to,
/// and the command topics it may publish on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

/// Makes a service account with a new secret.
pub async fn add(
    db: &DatabaseConnection,
    name: &str,
    grants: &Grants,
    by: &str,
    at: i64,
) -> Result<CreatedServiceAccount, ServiceError> {
    let Grants { subscribe, publish } = grants;
    if !valid_name(name) {
        return Err(ServiceError::InvalidName(name.to_owned()));
    }
    let count = subscribe.len() + publish.len();
    if count == 0 || count > MAX_GRANTS {
        return Err(ServiceError::GrantCount);
    }
    if let Some(bad) = subscribe.iter().find(|f| !acl::valid_grant(f)) {
        return Err(ServiceError::InvalidGrant(bad.clone()));
    }
    if let Some(bad) = publish.iter().find(|t| !acl::valid_command_grant(t)) {
        return Err(ServiceError::InvalidCommandGrant(bad.clone()));
    }
    // A device of the same name would be shadowed at login, where service
    // accounts are looked up first.
    if super::registry::find(db, name).await?.is_some() {
        return Err(ServiceError::DeviceName(name.to_owned()));
    }
    let secret = Alphanumeric.sample_string(&mut rand::rng(), SECRET_LEN);
    let backend = db.get_database_backend();
    let p: Vec<String> = (1..=6).map(|n| placeholder(backend, n)).collect();
    let sql = format!(
        "INSERT INTO service_account (name, secret_hash, subscribe, publish, created_at, \
         created_by) VALUES ({}, {}, {}, {}, {}, {})",
        p[0], p[1], p[2], p[3], p[4], p[5]
    );
    let json = |list: &Vec<String>| serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
    let values: Vec<Value> = vec![
        name.into(),
        hash_secret(&secret).into(),
        json(subscribe).into(),
        json(publish).into(),
        at.into(),
        by.into(),
    ];
    if let Err(e) = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
    {
        // Two adds of one name at once: the unique index refused one.
        if get(db, name).await?.is_some() {
            return Err(ServiceError::Exists(name.to_owned()));
        }
        return Err(e.into());
    }
    Ok(CreatedServiceAccount {
        account: ServiceAccount {
            name: name.to_owned(),
            subscribe: subscribe.clone(),
            publish: publish.clone(),
            created_at: at,
            created_by: by.to_owned(),
        },
        secret,
    })
}

/// Every service account, by name.
pub async fn list(db: &DatabaseConnection) -> Result<Vec<ServiceAccount>, StoreError> {
    let backend = db.get_database_backend();
    let sql = "SELECT name, subscribe, publish, created_at, created_by FROM service_account ORDER BY name";
    Ok(
        Row::find_by_statement(Statement::from_string(backend, sql.to_owned()))
            .all(db)
            .await?
            .into_iter()
            .map(Row::into_account)
            .collect(),
    )
}

/// One service account.
pub async fn get(
    db: &DatabaseConnection,
    name: &str,
) -> Result<Option<ServiceAccount>, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT name, subscribe, publish, created_at, created_by FROM service_account WHERE name = {}",
        placeholder(backend, 1)
    );
    Ok(
        Row::find_by_statement(Statement::from_sql_and_values(backend, sql, [name.into()]))
            .one(db)
            .await?
            .map(Row::into_account),
    )
}

/// Removes a service account; its secret stops working at once.
pub async fn remove(db: &DatabaseConnection, name: &str) -> Result<(), ServiceError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "DELETE FROM service_account WHERE name = {}",
        placeholder(backend, 1)
    );
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, [name.into()]))
        .await?;
    if done.rows_affected() == 0 {
        return Err(ServiceError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// The service account a CONNECT's user name and password log in as;
/// `None` if the name is no service account or the secret is wrong.
pub async fn login(
    db: &DatabaseConnection,
    name: &str,
    password: &str,
) -> Result<Option<ServiceAccount>, StoreError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT name, subscribe, publish, created_at, created_by FROM service_account \
         WHERE name = {} AND secret_hash = {}",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    let values: Vec<Value> = vec![name.into(), hash_secret(password).into()];
    Ok(
        Row::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
            .one(db)
            .await?
            .map(Row::into_account),
    )
}

/// `sightline service add|list|remove`, against the database directly.
pub async fn cli(store: &super::Store, action: ServiceCli) -> Result<(), ServiceError> {
    match action {
        ServiceCli::Add { name, grants } => {
            let made = store
                .add_service_account(&name, &grants, "cli", crate::clock::now_ms())
                .await?;
            println!(
                "service account: {}\nsecret: {}\ngranted: {}\n\n\
                 The secret is shown only now; it is stored as a hash. Subscribe with\n  \
                 mosquitto_sub -u {} -P <secret> -q 1 -t '{}' -v",
                made.account.name,
                made.secret,
                grants_text(&made.account),
                made.account.name,
                made.account
                    .subscribe
                    .first()
                    .map_or("sensor/#", String::as_str),
            );
        }
        ServiceCli::List => {
            for a in store.service_accounts().await? {
                println!("{}\t{}", a.name, grants_text(&a));
            }
        }
        ServiceCli::Remove { name } => {
            store.remove_service_account(&name).await?;
            println!("service account {name} removed");
        }
    }
    Ok(())
}

/// An account's grants in one line, as the CLI and the audit log show
/// them: its filters, then its command topics marked as such.
pub fn grants_text(account: &ServiceAccount) -> String {
    let publish = account.publish.iter().map(|t| format!("publish:{t}"));
    account
        .subscribe
        .iter()
        .cloned()
        .chain(publish)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `sightline service` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceCli {
    Add { name: String, grants: Grants },
    List,
    Remove { name: String },
}
