//! The data behind the Leptos pages: the server side of `app::api::Backend`,
//! which the pages' server functions call. Page errors are logged here,
//! once, and the page is given a neutral message.

use std::net::IpAddr;
use std::sync::Arc;

use app::api::{Backend, BackendError, BoxFuture, CommandForm, HistoryWindow};
use app::model::{Command, CommandRequest, DeviceCredentials, DeviceDetail, Fleet, SeriesResponse};

use super::devices::credentials;
use super::guard::ClientIp;
use super::AppState;
use crate::audit::{action, Audit};
use crate::auth::{Auth, AuthError, Caller};
use crate::clock::now_ms;
use crate::command::{CommandError, Commands};
use crate::desired::{Desired, DesiredError};
use crate::history;
use crate::metrics::Metrics;
use crate::presence::Tracker;
use crate::store::registry::RegistryError;
use crate::store::{Store, StoreError};

/// The pages' view of the store and counters.
pub(super) struct PageData {
    store: Store,
    commands: Arc<Commands>,
    desired: Arc<Desired>,
    feed: Arc<crate::feed::Feed>,
    metrics: Arc<Metrics>,
    presence: Arc<Tracker>,
    retain_raw_ms: Option<i64>,
    audit: Audit,
    auth: Arc<Auth>,
    manage: super::devices::Manage,
    broker: Option<(u16, bool)>,
}

/// The account and address behind the page request being served, as the
/// gate annotated the request; neither outside a request.
fn page_request() -> (Option<Caller>, Option<IpAddr>) {
    let Some(parts) = leptos::prelude::use_context::<axum::http::request::Parts>() else {
        return (None, None);
    };
    (
        parts.extensions.get::<Caller>().cloned(),
        parts.extensions.get::<ClientIp>().and_then(|c| c.0),
    )
}

/// Who to name in the audit log for a page action, and from where.
fn page_caller() -> (String, Option<IpAddr>) {
    let (caller, ip) = page_request();
    (caller.map_or_else(|| "unknown".to_owned(), |c| c.name), ip)
}

/// The signed-in account behind the page request, if any.
fn page_account() -> Option<(Caller, Option<IpAddr>)> {
    let (caller, ip) = page_request();
    Some((caller?, ip))
}

/// The signed-in account, for what only a person at the dashboard may do:
/// a leaked API token must not mint more tokens (see `accounts`).
fn page_session() -> Result<(Caller, Option<IpAddr>), BackendError> {
    match page_account() {
        Some((caller, ip)) if matches!(caller.via, crate::auth::Via::Session(_)) => {
            Ok((caller, ip))
        }
        _ => Err(BackendError::Forbidden(
            "this needs a dashboard session, not an API token".to_owned(),
        )),
    }
}

impl From<&AppState> for PageData {
    fn from(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            commands: state.commands.clone(),
            desired: state.desired.clone(),
            feed: state.feed.clone(),
            metrics: state.metrics.clone(),
            presence: state.presence.clone(),
            retain_raw_ms: state.retain_raw_ms,
            audit: state.audit.clone(),
            auth: state.auth.clone(),
            manage: super::devices::Manage::from(state),
            broker: state.broker,
        }
    }
}

impl PageData {
    pub(super) async fn detail(
        &self,
        id: &str,
        window_ms: i64,
    ) -> Result<Option<DeviceDetail>, StoreError> {
        let now = now_ms();
        let from = now - window_ms;
        let desired = self.store.desired(id).await?;
        Ok(self
            .store
            .device(id, from)
            .await?
            .map(|(mut summary, series)| {
                summary.rejected = self.metrics.rejected_everywhere(&summary.id);
                summary.presence = self.presence.get(&summary.id);
                let refused = self.metrics.refusal(&summary.id);
                DeviceDetail {
                    summary,
                    series,
                    from,
                    counters: self.metrics.everywhere(),
                    generated_at: now,
                    refused,
                    desired,
                }
            }))
    }
}

impl Backend for PageData {
    fn fleet(&self) -> BoxFuture<'_, Result<Fleet, BackendError>> {
        Box::pin(async move {
            let mut devices = self.store.devices().await.map_err(log_for_page)?;
            for d in &mut devices {
                d.rejected = self.metrics.rejected_everywhere(&d.id);
            }
            self.presence.annotate(&mut devices);
            Ok(Fleet {
                devices,
                counters: self.metrics.everywhere(),
                generated_at: now_ms(),
            })
        })
    }

    fn device(
        &self,
        id: String,
        window_ms: i64,
    ) -> BoxFuture<'_, Result<Option<DeviceDetail>, BackendError>> {
        Box::pin(async move { self.detail(&id, window_ms).await.map_err(log_for_page) })
    }

    fn history(
        &self,
        id: String,
        window: HistoryWindow,
        points: usize,
        tz: String,
    ) -> BoxFuture<'_, Result<Option<SeriesResponse>, BackendError>> {
        Box::pin(async move {
            let now = now_ms();
            let (from, to) = match window {
                HistoryWindow::Last { span } => (now.saturating_sub(span.max(1)), now),
                HistoryWindow::Between { from, to } => (from, to),
            };
            // The same checks as the series API, except that the page's
            // own width and zone never fail it: points are clamped, and a
            // browser that reports no usable zone gets UTC buckets.
            let query = history::SeriesQuery {
                from: Some(from),
                to: Some(to),
                points: Some(points.clamp(1, history::MAX_POINTS)),
                tz: tz.parse::<chrono_tz::Tz>().is_ok().then_some(tz),
                ..history::SeriesQuery::default()
            };
            let request = history::SeriesRequest::parse(query, now, self.retain_raw_ms)
                .map_err(|e| BackendError::Invalid(e.to_string()))?;
            history::load(&self.store, &id, &request)
                .await
                .map_err(log_for_page)
        })
    }

    fn commands(&self, id: String) -> BoxFuture<'_, Result<Vec<Command>, BackendError>> {
        Box::pin(async move { self.page_commands(&id).await })
    }

    fn send_command(
        &self,
        id: String,
        form: CommandForm,
    ) -> BoxFuture<'_, Result<Command, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            let c = self.page_send(&id, form).await?;
            self.audit.command_sent(&actor, &id, &c, ip).await;
            Ok(c)
        })
    }

    fn desired(
        &self,
        id: String,
    ) -> BoxFuture<'_, Result<Option<app::model::DesiredState>, BackendError>> {
        Box::pin(async move { self.desired.get(&id).await.map_err(log_for_page) })
    }

    fn set_desired(
        &self,
        id: String,
        json: String,
    ) -> BoxFuture<'_, Result<Option<app::model::DesiredState>, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            if json.trim().is_empty() {
                let cleared = self.desired.clear(&id).await.map_err(desired_failed)?;
                if cleared {
                    self.audit
                        .record(&actor, action::DESIRED_CLEAR, Some(&id), None, ip)
                        .await;
                }
                return Ok(None);
            }
            let payload: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
                BackendError::Invalid(format!("the desired state is not JSON: {e}"))
            })?;
            let state = self
                .desired
                .set(&id, &payload, &actor)
                .await
                .map_err(desired_failed)?;
            // The version and size only: a configuration may hold
            // credentials.
            let detail = format!(
                "v{}, {} bytes",
                state.version,
                state.payload.to_string().len()
            );
            self.audit
                .record(&actor, action::DESIRED_SET, Some(&id), Some(detail), ip)
                .await;
            Ok(Some(state))
        })
    }

    fn service_accounts(
        &self,
    ) -> BoxFuture<'_, Result<Vec<app::model::ServiceAccount>, BackendError>> {
        Box::pin(async move { self.store.service_accounts().await.map_err(log_for_page) })
    }

    fn add_service_account(
        &self,
        name: String,
        subscribe: Vec<String>,
        publish: Vec<String>,
    ) -> BoxFuture<'_, Result<app::model::CreatedServiceAccount, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            let grants = crate::store::services::Grants { subscribe, publish };
            let made = self
                .store
                .add_service_account(&name, &grants, &actor, now_ms())
                .await
                .map_err(service_failed)?;
            self.audit.service_added(&actor, &made.account, ip).await;
            Ok(made)
        })
    }

    fn remove_service_account(&self, name: String) -> BoxFuture<'_, Result<(), BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.store
                .remove_service_account(&name)
                .await
                .map_err(service_failed)?;
            self.feed.end_account(&name);
            self.audit
                .record(&actor, action::SERVICE_REMOVE, Some(&name), None, ip)
                .await;
            Ok(())
        })
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<app::model::Account>, BackendError>> {
        self.page_accounts()
    }

    fn audit(
        &self,
        limit: u64,
    ) -> BoxFuture<'_, Result<Vec<app::model::AuditEntry>, BackendError>> {
        Box::pin(async move { self.store.audit(limit, None).await.map_err(log_for_page) })
    }

    fn add_account(
        &self,
        account: app::model::NewAccount,
    ) -> BoxFuture<'_, Result<app::model::Account, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.auth
                .add_account(&account.name, &account.password, account.role)
                .await
                .map_err(page_auth_error)?;
            self.audit
                .record(
                    &actor,
                    action::ACCOUNT_ADD,
                    Some(&account.name),
                    Some(account.role.label().to_owned()),
                    ip,
                )
                .await;
            self.store
                .account(&account.name)
                .await
                .map_err(log_for_page)?
                .map(crate::store::accounts::AccountRow::into_account)
                .ok_or_else(|| {
                    tracing::error!(account = %account.name, "a new account vanished at once");
                    BackendError::Unavailable
                })
        })
    }

    fn set_role(
        &self,
        name: String,
        role: app::model::Role,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.auth
                .set_role(&name, role)
                .await
                .map_err(page_auth_error)?;
            self.audit
                .record(
                    &actor,
                    action::ACCOUNT_ROLE,
                    Some(&name),
                    Some(role.label().to_owned()),
                    ip,
                )
                .await;
            Ok(())
        })
    }

    fn remove_account(&self, name: String) -> BoxFuture<'_, Result<(), BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.auth
                .remove_account(&name)
                .await
                .map_err(page_auth_error)?;
            self.audit
                .record(&actor, action::ACCOUNT_REMOVE, Some(&name), None, ip)
                .await;
            Ok(())
        })
    }

    fn set_enabled(&self, id: String, enabled: bool) -> BoxFuture<'_, Result<(), BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.manage
                .set_enabled(&id, enabled, &actor, ip)
                .await
                .map_err(page_registry_error)
        })
    }

    fn set_label(
        &self,
        id: String,
        label: Option<String>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.manage
                .set_label(&id, label, &actor, ip)
                .await
                .map_err(page_registry_error)
        })
    }

    fn rotate_secret(&self, id: String) -> BoxFuture<'_, Result<DeviceCredentials, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.manage
                .rotate(&id, &actor, ip)
                .await
                .map_err(page_registry_error)
        })
    }

    fn delete_device(
        &self,
        id: String,
        keep_data: bool,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            self.manage
                .delete(&id, keep_data, &actor, ip)
                .await
                .map_err(page_registry_error)
        })
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<app::model::ApiToken>, BackendError>> {
        let caller = page_account();
        Box::pin(async move {
            let Some((caller, _)) = caller else {
                return Ok(Vec::new());
            };
            self.store
                .tokens(caller.account_id)
                .await
                .map_err(log_for_page)
        })
    }

    fn add_token(
        &self,
        label: String,
    ) -> BoxFuture<'_, Result<app::model::CreatedApiToken, BackendError>> {
        let session = page_session();
        Box::pin(async move {
            let (caller, ip) = session?;
            super::accounts::create_token(&self.auth, &self.audit, &caller, ip, &label)
                .await
                .map_err(page_auth_error)
        })
    }

    fn revoke_token(&self, id: String) -> BoxFuture<'_, Result<(), BackendError>> {
        let caller = page_account();
        Box::pin(async move {
            let Some((caller, ip)) = caller else {
                return Err(BackendError::Invalid("no such token".to_owned()));
            };
            match super::accounts::revoke_own_token(&self.auth, &self.audit, &caller, ip, &id).await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(BackendError::Invalid(
                    "no such token; it may have been revoked already".to_owned(),
                )),
                Err(e) => Err(log_for_page(e)),
            }
        })
    }

    fn add_device(&self, id: String) -> BoxFuture<'_, Result<DeviceCredentials, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            match self.store.add_device(&id, now_ms()).await {
                Ok(created) => {
                    self.audit
                        .record(&actor, action::DEVICE_ADD, Some(&created.id), None, ip)
                        .await;
                    Ok(credentials(created, self.broker))
                }
                Err(RegistryError::Store(e)) => Err(log_for_page(e)),
                Err(e) => Err(BackendError::Invalid(e.to_string())),
            }
        })
    }
}

/// A device operation's error as the device page shows it.
fn page_registry_error(e: RegistryError) -> BackendError {
    match e {
        RegistryError::Store(e) => log_for_page(e),
        e => BackendError::Invalid(e.to_string()),
    }
}

impl PageData {
    fn page_accounts(&self) -> BoxFuture<'_, Result<Vec<app::model::Account>, BackendError>> {
        Box::pin(async move { self.store.accounts().await.map_err(log_for_page) })
    }
}

/// Commands the device page lists.
const PAGE_COMMANDS: u64 = 20;

impl PageData {
    async fn page_commands(&self, id: &str) -> Result<Vec<Command>, BackendError> {
        self.commands
            .recent(id, PAGE_COMMANDS)
            .await
            .map_err(log_for_page)
    }

    async fn page_send(&self, id: &str, form: CommandForm) -> Result<Command, BackendError> {
        let params = app::model::parse_params(&form.params).map_err(|why| {
            Metrics::add(&self.metrics.commands.refused, 1);
            BackendError::Invalid(why)
        })?;
        let request = CommandRequest {
            name: form.name,
            params,
            two_way: form.two_way,
            persistent: form.persistent,
            timeout_ms: None,
            ttl_ms: None,
        };
        match self.commands.send(id, request).await {
            Ok(c) => {
                tracing::info!(device = %id, command = %c.id, name = %c.name, "command sent from the dashboard");
                Ok(c)
            }
            Err(CommandError::Store(e)) => Err(log_for_page(e)),
            Err(e) => Err(BackendError::Invalid(e.to_string())),
        }
    }
}

/// A service account change's error as the admin page shows it.
fn service_failed(e: crate::store::services::ServiceError) -> BackendError {
    match e {
        crate::store::services::ServiceError::Store(e) => log_for_page(e),
        e => BackendError::Invalid(e.to_string()),
    }
}

/// A desired-state change's error as the device page shows it.
fn desired_failed(e: DesiredError) -> BackendError {
    match e {
        DesiredError::Store(e) => log_for_page(e),
        e => BackendError::Invalid(e.to_string()),
    }
}

/// An account operation's error as the admin page shows it.
fn page_auth_error(e: AuthError) -> BackendError {
    match e {
        AuthError::Store(e) => log_for_page(e),
        AuthError::Hashing(why) => {
            tracing::error!("page action failed: {why}");
            BackendError::Unavailable
        }
        e => BackendError::Invalid(e.to_string()),
    }
}

/// Logs a store error behind a page, the one place it is logged, and gives
/// the page a neutral message.
fn log_for_page(e: StoreError) -> BackendError {
    tracing::error!("page data failed: {e}");
    BackendError::Unavailable
}

/// The path under which Leptos serves the pages' server functions.
pub(super) const SERVER_FN_PREFIX: &str = "/_app/";

/// The most of a failed server function's answer this reads; its errors
/// are one line of text, so anything longer is left as it was.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Makes a server function answer 400, not 500, when the request's
/// arguments cannot be read: missing, of the wrong type or malformed.
///
/// Leptos decodes a server function's arguments before the function runs
/// and answers any failure to do so with 500, as if the server had failed.
/// That would send operators and monitoring after a fault that is the
/// caller's. Its error body names the kind of failure (`Args|…`), which is
/// what this reads; the message is kept, and the refusal is logged.
pub(super) async fn bad_arguments_are_400(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;

    // Only server functions are looked at; other requests pass untouched.
    if !request.uri().path().starts_with(SERVER_FN_PREFIX) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return axum::response::Response::from_parts(
            parts,
            axum::body::Body::from("ServerError|the server failed"),
        );
    };
    let kind = bytes.split(|b| *b == b'|').next().unwrap_or_default();
    if matches!(kind, b"Args" | b"MissingArg" | b"Deserialization") {
        tracing::warn!(
            path,
            error = %String::from_utf8_lossy(&bytes),
            "server function refused unreadable arguments"
        );
        parts.status = StatusCode::BAD_REQUEST;
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}
