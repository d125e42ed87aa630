//! Server functions that load page data, and the [`Backend`] trait through
//! which they reach the server's store without this crate depending on it.

use leptos::prelude::*;

use crate::model::{
    Account, ApiToken, AuditEntry, Command, CreatedApiToken, CreatedServiceAccount, DesiredState,
    DeviceCredentials, DeviceDetail, Fleet, SeriesResponse, ServiceAccount,
};
#[cfg(feature = "ssr")]
use crate::model::{NewAccount, Role};

/// How much raw history `GET /api/devices/<id>` returns with a device.
pub const RECENT_WINDOW_MS: i64 = 15 * 60 * 1000;

/// The most points one metric's chart holds, loaded or live; the newest are
/// kept. This bounds page loads and browser memory for fast devices.
pub const MAX_SERIES_POINTS: usize = 10_000;

#[cfg(feature = "ssr")]
pub use backend::{Backend, BoxFuture, SharedBackend};

/// Why the server could not do what a page asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The request itself was wrong: a bad name, an unknown device or
    /// account, unreadable params. The message says why, for the person
    /// who made it; the server function answers 400.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this in the way they asked, whatever their
    /// role; the server function answers 403.
    #[error("{0}")]
    Forbidden(String),
    /// The server failed, most likely its database. The cause was logged
    /// where it happened; the page shows only this, and the server
    /// function answers 500.
    #[error("the database is unavailable")]
    Unavailable,
}

#[cfg(feature = "ssr")]
mod backend {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;

    use super::{BackendError, CommandForm};
    use crate::model::{
        Account, ApiToken, AuditEntry, Command, CreatedApiToken, CreatedServiceAccount,
        DesiredState, DeviceCredentials, DeviceDetail, Fleet, NewAccount, Role, SeriesResponse,
        ServiceAccount,
    };

    /// A boxed, sendable future, so the trait stays object-safe.
    pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

    /// What the pages need from the server. The server implements it over its
    /// store and counters and provides it as Leptos context.
    pub trait Backend: Send + Sync + 'static {
        /// Every device with its latest values, plus global counters.
        fn fleet(&self) -> BoxFuture<'_, Result<Fleet, BackendError>>;
        /// One device with the last `window_ms` of history, or `None` if the
        /// device is unknown.
        fn device(
            &self,
            id: String,
            window_ms: i64,
        ) -> BoxFuture<'_, Result<Option<DeviceDetail>, BackendError>>;
        /// A device's history at chart resolution: `[from, to]`, or the
        /// last `span` milliseconds when `from`/`to` are absent, in at most
        /// `points` buckets per metric with boundaries in time zone `tz`.
        /// `None` if the device is unknown.
        fn history(
            &self,
            id: String,
            window: HistoryWindow,
            points: usize,
            tz: String,
        ) -> BoxFuture<'_, Result<Option<SeriesResponse>, BackendError>>;
        /// Creates a device and returns its secret, once. The error is a
        /// message for the operator.
        fn add_device(&self, id: String) -> BoxFuture<'_, Result<DeviceCredentials, BackendError>>;
        /// A device's newest commands, newest first.
        fn commands(&self, id: String) -> BoxFuture<'_, Result<Vec<Command>, BackendError>>;
        /// Sends a command as typed on the device page; the error is a
        /// message for the operator. Refusals, bad params included, are
        /// counted like the API's.
        fn send_command(
            &self,
            id: String,
            form: CommandForm,
        ) -> BoxFuture<'_, Result<Command, BackendError>>;
        /// A device's desired state, if one is set.
        fn desired(&self, id: String) -> BoxFuture<'_, Result<Option<DesiredState>, BackendError>>;
        /// Sets a device's desired state from the JSON text typed on the
        /// device page, or removes it when the text is empty.
        fn set_desired(
            &self,
            id: String,
            json: String,
        ) -> BoxFuture<'_, Result<Option<DesiredState>, BackendError>>;
        /// Every service account, for the admin page.
        fn service_accounts(&self) -> BoxFuture<'_, Result<Vec<ServiceAccount>, BackendError>>;
        /// Makes a service account with the filters and command topics the
        /// admin typed (separated by spaces or commas); its secret is
        /// returned once.
        fn add_service_account(
            &self,
            name: String,
            subscribe: Vec<String>,
            publish: Vec<String>,
        ) -> BoxFuture<'_, Result<CreatedServiceAccount, BackendError>>;
        /// Removes a service account and ends its connections.
        fn remove_service_account(&self, name: String) -> BoxFuture<'_, Result<(), BackendError>>;
        /// Every operator account, for the admin page.
        fn accounts(&self) -> BoxFuture<'_, Result<Vec<Account>, BackendError>>;
        /// The newest audit events, for the admin page.
        fn audit(&self, limit: u64) -> BoxFuture<'_, Result<Vec<AuditEntry>, BackendError>>;
        /// Creates an account from the admin page; the error is a message
        /// for the admin.
        fn add_account(&self, account: NewAccount) -> BoxFuture<'_, Result<Account, BackendError>>;
        /// Changes an account's role from the admin page.
        fn set_role(&self, name: String, role: Role) -> BoxFuture<'_, Result<(), BackendError>>;
        /// Removes an account from the admin page.
        fn remove_account(&self, name: String) -> BoxFuture<'_, Result<(), BackendError>>;
        /// Enables or disables a device; disabling ends its sessions.
        fn set_enabled(&self, id: String, enabled: bool)
            -> BoxFuture<'_, Result<(), BackendError>>;
        /// Labels a device; `None` removes the label.
        fn set_label(
            &self,
            id: String,
            label: Option<String>,
        ) -> BoxFuture<'_, Result<(), BackendError>>;
        /// Gives a device a new secret and returns it, once.
        fn rotate_secret(
            &self,
            id: String,
        ) -> BoxFuture<'_, Result<DeviceCredentials, BackendError>>;
        /// Deletes a device, with its readings or keeping them.
        fn delete_device(
            &self,
            id: String,
            keep_data: bool,
        ) -> BoxFuture<'_, Result<(), BackendError>>;
        /// The signed-in account's API tokens, without their secrets.
        fn tokens(&self) -> BoxFuture<'_, Result<Vec<ApiToken>, BackendError>>;
        /// Creates an API token for the signed-in account; its secret is
        /// returned once. Refused to callers that signed in with a token.
        fn add_token(&self, label: String) -> BoxFuture<'_, Result<CreatedApiToken, BackendError>>;
        /// Revokes one of the signed-in account's tokens at once.
        fn revoke_token(&self, id: String) -> BoxFuture<'_, Result<(), BackendError>>;
    }

    pub use super::HistoryWindow;

    /// The form in which the backend is stored in Leptos context.
    pub type SharedBackend = Arc<dyn Backend>;
}

/// Loads every account, for admins.
#[server(prefix = "/_app", endpoint = "accounts")]
pub async fn get_accounts() -> Result<Vec<Account>, ServerFnError> {
    backend()?.accounts().await.map_err(failed)
}

/// The most audit events the admin page shows.
pub const AUDIT_PAGE: u64 = 200;

/// Loads the newest audit events, for admins.
#[server(prefix = "/_app", endpoint = "audit")]
pub async fn get_audit() -> Result<Vec<AuditEntry>, ServerFnError> {
    backend()?.audit(AUDIT_PAGE).await.map_err(failed)
}

/// Creates an account (admins only, enforced by the server's gate).
#[server(prefix = "/_app", endpoint = "add_account")]
pub async fn add_account(
    name: String,
    password: String,
    role: String,
) -> Result<Account, ServerFnError> {
    let role =
        Role::parse(&role).ok_or_else(|| failed(BackendError::Invalid("unknown role".into())))?;
    let account = NewAccount {
        name: name.trim().to_owned(),
        password,
        role,
    };
    backend()?.add_account(account).await.map_err(failed)
}

/// Changes an account's role (admins only).
#[server(prefix = "/_app", endpoint = "set_role")]
pub async fn set_role(name: String, role: String) -> Result<(), ServerFnError> {
    let role =
        Role::parse(&role).ok_or_else(|| failed(BackendError::Invalid("unknown role".into())))?;
    backend()?.set_role(name, role).await.map_err(failed)
}

/// Removes an account with its sessions and tokens (admins only).
#[server(prefix = "/_app", endpoint = "remove_account")]
pub async fn remove_account(name: String) -> Result<(), ServerFnError> {
    backend()?.remove_account(name).await.map_err(failed)
}

/// Loads the signed-in account's API tokens.
#[server(prefix = "/_app", endpoint = "tokens")]
pub async fn get_tokens() -> Result<Vec<ApiToken>, ServerFnError> {
    backend()?.tokens().await.map_err(failed)
}

/// Creates an API token for the signed-in account, shown once.
#[server(prefix = "/_app", endpoint = "add_token")]
pub async fn add_token(label: String) -> Result<CreatedApiToken, ServerFnError> {
    backend()?.add_token(label).await.map_err(failed)
}

/// Revokes one of the signed-in account's API tokens.
#[server(prefix = "/_app", endpoint = "revoke_token")]
pub async fn revoke_token(id: String) -> Result<(), ServerFnError> {
    backend()?.revoke_token(id).await.map_err(failed)
}

/// Loads the fleet overview.
#[server(prefix = "/_app", endpoint = "fleet")]
pub async fn get_fleet() -> Result<Fleet, ServerFnError> {
    backend()?.fleet().await.map_err(failed)
}

/// Loads one device's summary, latest values and counters. Its charts come
/// from [`get_history`], so no raw points are loaded here.
#[server(prefix = "/_app", endpoint = "device")]
pub async fn get_device(id: String) -> Result<Option<DeviceDetail>, ServerFnError> {
    backend()?.device(id, 0).await.map_err(failed)
}

/// Which period a history request covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HistoryWindow {
    /// The last `span` milliseconds, ending at the server's now.
    Last { span: i64 },
    /// A fixed window, both ends inclusive.
    Between { from: i64, to: i64 },
}

/// Loads one device's history at chart resolution; see
/// [`Backend::history`].
#[server(prefix = "/_app", endpoint = "history")]
pub async fn get_history(
    id: String,
    window: HistoryWindow,
    points: usize,
    tz: String,
) -> Result<Option<SeriesResponse>, ServerFnError> {
    backend()?
        .history(id, window, points, tz)
        .await
        .map_err(failed)
}

/// Creates a device from the dashboard and returns its secret, once.
#[server(prefix = "/_app", endpoint = "add_device")]
pub async fn add_device(id: String) -> Result<DeviceCredentials, ServerFnError> {
    backend()?
        .add_device(id.trim().to_owned())
        .await
        .map_err(failed)
}

/// Enables or disables a device from its page (operators).
#[server(prefix = "/_app", endpoint = "set_enabled")]
pub async fn set_enabled(id: String, enabled: bool) -> Result<(), ServerFnError> {
    backend()?.set_enabled(id, enabled).await.map_err(failed)
}

/// Labels a device from its page (operators); blank removes the label.
#[server(prefix = "/_app", endpoint = "set_label")]
pub async fn set_label(id: String, label: String) -> Result<(), ServerFnError> {
    let label =
        crate::model::clean_label(&label).map_err(|why| failed(BackendError::Invalid(why)))?;
    backend()?.set_label(id, label).await.map_err(failed)
}

/// Gives a device a new secret from its page (operators), shown once.
#[server(prefix = "/_app", endpoint = "rotate_secret")]
pub async fn rotate_secret(id: String) -> Result<DeviceCredentials, ServerFnError> {
    backend()?.rotate_secret(id).await.map_err(failed)
}

/// Deletes a device from its page (operators). `confirm` must repeat the
/// id, as the operator typed it, so that a stray click deletes nothing.
#[server(prefix = "/_app", endpoint = "delete_device")]
pub async fn delete_device(
    id: String,
    confirm: String,
    keep_data: bool,
) -> Result<(), ServerFnError> {
    if confirm.trim() != id {
        return Err(failed(BackendError::Invalid(
            "type the device id exactly to confirm".into(),
        )));
    }
    backend()?
        .delete_device(id, keep_data)
        .await
        .map_err(failed)
}

/// Loads a device's newest commands, newest first.
#[server(prefix = "/_app", endpoint = "commands")]
pub async fn get_commands(id: String) -> Result<Vec<Command>, ServerFnError> {
    backend()?.commands(id).await.map_err(failed)
}

/// Sends a command from the device page. `params` is the JSON text the
/// operator typed; empty means `{}`.
#[server(prefix = "/_app", endpoint = "send_command")]
pub async fn send_command(
    id: String,
    name: String,
    params: String,
    two_way: bool,
    persistent: bool,
) -> Result<Command, ServerFnError> {
    let form = CommandForm {
        name: name.trim().to_owned(),
        params,
        two_way,
        persistent,
    };
    backend()?.send_command(id, form).await.map_err(failed)
}

/// Loads a device's desired state, for the device page to follow the
/// device's acknowledgement.
#[server(prefix = "/_app", endpoint = "desired")]
pub async fn get_desired(id: String) -> Result<Option<DesiredState>, ServerFnError> {
    backend()?.desired(id).await.map_err(failed)
}

/// Sets a device's desired state from the device page: `json` is the text
/// the operator typed; empty removes the state.
#[server(prefix = "/_app", endpoint = "set_desired")]
pub async fn set_desired(id: String, json: String) -> Result<Option<DesiredState>, ServerFnError> {
    backend()?.set_desired(id, json).await.map_err(failed)
}

/// Loads every service account, for admins.
#[server(prefix = "/_app", endpoint = "service_accounts")]
pub async fn get_service_accounts() -> Result<Vec<ServiceAccount>, ServerFnError> {
    backend()?.service_accounts().await.map_err(failed)
}

/// Makes a service account from the admin page; `grants` are the filters
/// and `publish` the command topics, as typed, separated by spaces or
/// commas.
#[server(prefix = "/_app", endpoint = "add_service_account")]
pub async fn add_service_account(
    name: String,
    grants: String,
    publish: String,
) -> Result<CreatedServiceAccount, ServerFnError> {
    let split = |text: String| -> Vec<String> {
        text.split([' ', ','])
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect()
    };
    backend()?
        .add_service_account(name.trim().to_owned(), split(grants), split(publish))
        .await
        .map_err(failed)
}

/// Removes a service account from the admin page.
#[server(prefix = "/_app", endpoint = "remove_service_account")]
pub async fn remove_service_account(name: String) -> Result<(), ServerFnError> {
    backend()?
        .remove_service_account(name)
        .await
        .map_err(failed)
}

/// A command as typed on the device page: `params` is the operator's JSON
/// text, parsed (and refused, counted, if it is not JSON) by the server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandForm {
    pub name: String,
    pub params: String,
    pub two_way: bool,
    pub persistent: bool,
}

/// A backend error as the server function's answer: its message, with 400
/// for bad input and 500 for the server's own failures.
#[cfg(feature = "ssr")]
fn failed(e: BackendError) -> ServerFnError {
    use leptos_axum::ResponseOptions;
    if let Some(response) = use_context::<ResponseOptions>() {
        response.set_status(match e {
            BackendError::Invalid(_) => http::StatusCode::BAD_REQUEST,
            BackendError::Forbidden(_) => http::StatusCode::FORBIDDEN,
            BackendError::Unavailable => http::StatusCode::INTERNAL_SERVER_ERROR,
        });
    }
    ServerFnError::new(e)
}

/// The server provides the backend as context on every request; a missing
/// one is a wiring bug, reported as an error rather than a panic.
#[cfg(feature = "ssr")]
fn backend() -> Result<SharedBackend, ServerFnError> {
    use_context::<SharedBackend>().ok_or_else(|| ServerFnError::new("no data backend"))
}
