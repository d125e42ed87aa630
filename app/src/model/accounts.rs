//! Operator accounts on the wire: roles, accounts, API tokens and the
//! audit log.

use serde::{Deserialize, Serialize};

use super::EpochMs;

/// What an operator account may do. Each role includes the ones before it:
/// a viewer sees dashboards, an operator also sends commands and manages
/// devices, and an admin also manages accounts and reads the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn label(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.label() == text)
    }

    /// Whether this role may send commands and change devices.
    pub fn can_operate(self) -> bool {
        self >= Role::Operator
    }
}

/// The signed-in account, as the pages see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Me {
    pub name: String,
    pub role: Role,
}

/// An operator account, as admins see it. The password hash never leaves
/// the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Account {
    pub name: String,
    pub role: Role,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub created_at: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub password_changed_at: EpochMs,
}

/// The body of `POST /api/users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct NewAccount {
    pub name: String,
    pub password: String,
    pub role: Role,
}

/// The body of `PATCH /api/users/{name}`: what to change; a new password
/// signs the account out everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AccountChange {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub password: Option<String>,
}

/// The body of `PUT /api/me/password`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct PasswordChange {
    pub current: String,
    pub new: String,
}

/// An API token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApiToken {
    pub id: String,
    pub label: String,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub created_at: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i64>))]
    pub last_used_at: Option<EpochMs>,
}

/// The body of `POST /api/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct NewApiToken {
    pub label: String,
}

/// A token just created: `token` is shown this once and never again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct CreatedApiToken {
    pub id: String,
    pub label: String,
    pub token: String,
}

/// One line of the audit log: who did what, to what, when and from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub at: EpochMs,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<String>,
    pub ip: Option<String>,
}

/// An audit action as words for the admin page, such as "changed a role"
/// for `account_role`; an action this version does not know shows as is.
pub fn action_words(action: &str) -> &str {
    match action {
        "login" => "signed in",
        "login_failed" => "failed to sign in",
        "logout" => "signed out",
        "account_add" => "added an account",
        "account_remove" => "removed an account",
        "account_role" => "changed a role",
        "password_change" => "changed a password",
        "token_add" => "made an API token",
        "token_revoke" => "revoked an API token",
        "device_add" => "added a device",
        "device_enable" => "enabled a device",
        "device_disable" => "disabled a device",
        "device_label" => "labelled a device",
        "device_rotate" => "gave a device a new secret",
        "device_delete" => "deleted a device",
        "command_send" => "sent a command",
        "desired_set" => "set a desired state",
        "desired_clear" => "removed a desired state",
        "service_add" => "made a service account",
        "service_remove" => "removed a service account",
        other => other,
    }
}

/// An MQTT login for a tool that reads the stream of readings, not a
/// device: it may subscribe to the filters it was granted, and to nothing
/// else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ServiceAccount {
    /// Its MQTT user name.
    pub name: String,
    /// The topic filters it may subscribe to, each under `sensor/`.
    pub subscribe: Vec<String>,
    /// The command topics it may publish tracked commands on:
    /// `command/+` (every device) or `command/<device id>`.
    #[serde(default)]
    pub publish: Vec<String>,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub created_at: super::EpochMs,
    pub created_by: String,
}

/// The body of `POST /api/service-accounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewServiceAccount {
    pub name: String,
    /// Filters under `sensor/` (for example `sensor/#` or
    /// `sensor/Device001`); with `publish`, at least one grant in all.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Command topics (`command/+` or `command/<device id>`) it may
    /// publish tracked commands on; none unless given.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// A service account just made, with its secret, shown only this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct CreatedServiceAccount {
    pub account: ServiceAccount,
    /// The MQTT password; stored only as a hash.
    pub secret: String,
}

impl std::fmt::Debug for CreatedServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedServiceAccount")
            .field("account", &self.account)
            .field("secret", &"***")
            .finish()
    }
}
