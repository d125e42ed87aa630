//! HTTP: the server-rendered dashboard, its static assets, the JSON API and
//! the live WebSocket, all on one axum router behind one gate.
//!
//! - [`routes`]: every route's access rule, declared with the route.
//! - [`guard`]: the gate (who is asking, CSRF, roles) and security headers.
//! - [`login`]: sign-in and sign-out forms.
//! - [`accounts`]: the JSON API of accounts, tokens and the audit log.

pub mod accounts;
pub mod guard;
pub mod login;
pub mod openapi;
pub mod routes;

use std::net::IpAddr;
use std::sync::Arc;

use app::api::{
    Backend, BackendError, BoxFuture, CommandForm, HistoryWindow, SharedBackend, RECENT_WINDOW_MS,
};
use app::model::{
    Command, CommandRequest, Counters, DeviceCredentials, DeviceDetail, DeviceLabel, DeviceSummary,
    Fleet, SeriesResponse,
};
use axum::extract::{Extension, FromRef, Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::audit::{action, Audit};
use crate::auth::{Auth, AuthError, Caller};
use crate::command::{wire::Refusal, CommandError, Commands};
use crate::edge::Sessions;
use crate::history;
use crate::ingest::now_ms;
use crate::live::{self, Live};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::store::registry::{NewDevice, RegistryError};
use crate::store::{Store, StoreError};
use guard::{ClientIp, Gate};
use routes::{Access, Kind, Rule, Table};

/// Everything the handlers share.
#[derive(Clone, Debug, FromRef)]
pub struct AppState {
    pub leptos: LeptosOptions,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<Presence>,
    /// Live device sessions, so that disabling a device disconnects it.
    pub sessions: Arc<Sessions>,
    pub commands: Arc<Commands>,
    pub live: Live,
    /// How long raw readings are kept, so that history queries of older
    /// periods go to rollups.
    pub retain_raw: crate::store::retention::Retention,
    pub auth: Arc<Auth>,
    pub audit: Audit,
}

/// What an API call can fail with. Clients see a short, fixed message; the
/// real cause is logged once here.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Throttled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(_) => Self::BadRequest(e.to_string()),
            AuthError::Exists(_) | AuthError::Refused(_) => Self::Conflict(e.to_string()),
            AuthError::NotFound(_) => Self::NotFound,
            AuthError::WrongCredentials | AuthError::Throttled(_) => Self::Forbidden(e.to_string()),
            AuthError::Hashing(_) => Self::Internal(e.to_string()),
            AuthError::Store(e) => Self::Store(e),
        }
    }
}

impl From<RegistryError> for HttpError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::InvalidId(_) => Self::BadRequest(e.to_string()),
            RegistryError::Exists(_) => Self::Conflict(e.to_string()),
            RegistryError::NotFound(_) => Self::NotFound,
            RegistryError::Store(e) => Self::Store(e),
        }
    }
}

impl From<CommandError> for HttpError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownDevice(_) => Self::NotFound,
            CommandError::Refused(Refusal::TooLarge { .. }) => Self::TooLarge(e.to_string()),
            CommandError::Refused(Refusal::Invalid(why)) => Self::BadRequest(why),
            CommandError::Store(e) => Self::Store(e),
        }
    }
}

/// A JSON body, or 400 with why it could not be read.
pub(crate) fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, HttpError> {
    body.map(|Json(b)| b)
        .map_err(|e| HttpError::BadRequest(e.body_text()))
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
            Self::Conflict(why) => (StatusCode::CONFLICT, why.clone()),
            Self::TooLarge(why) => (StatusCode::PAYLOAD_TOO_LARGE, why.clone()),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, why.clone()),
            Self::Throttled(why) => (StatusCode::TOO_MANY_REQUESTS, why.clone()),
            Self::Internal(why) => {
                tracing::error!("API request failed: {why}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
            Self::Store(e) => {
                tracing::error!("API request failed: {e}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// Every JSON route with its rule. The router and [`route_rules`] are both
/// built from this one list.
fn api_table() -> Table {
    use app::model::Role::{Admin, Operator, Viewer};
    use Access::{Least, Public};
    use Method as M;
    Table::default()
        .at(M::GET, "/api/health", Public, health)
        .at(M::GET, "/api/stats", Least(Viewer), stats)
        .at(M::GET, "/metrics", Least(Viewer), prometheus)
        .at(M::GET, "/api/devices", Least(Viewer), devices)
        .at(M::POST, "/api/devices", Least(Operator), add_device)
        .at(M::GET, "/api/devices/{id}", Least(Viewer), device)
        .at(
            M::PUT,
            "/api/devices/{id}/enabled",
            Least(Operator),
            set_enabled,
        )
        .at(
            M::PUT,
            "/api/devices/{id}/label",
            Least(Operator),
            set_label,
        )
        .at(
            M::GET,
            "/api/devices/{id}/export",
            Least(Viewer),
            crate::export::export,
        )
        .at(
            M::GET,
            "/api/devices/{id}/series",
            Least(Viewer),
            crate::history::series,
        )
        .at(
            M::GET,
            "/api/devices/{id}/commands",
            Least(Viewer),
            device_commands,
        )
        .at(
            M::POST,
            "/api/devices/{id}/commands",
            Least(Operator),
            send_command,
        )
        .at(M::GET, "/api/commands/{id}", Least(Viewer), command)
        .at(M::GET, "/api/me", Least(Viewer), accounts::me)
        .at(
            M::PUT,
            "/api/me/password",
            Least(Viewer),
            accounts::change_own_password,
        )
        .at(M::GET, "/api/tokens", Least(Viewer), accounts::tokens)
        .at(M::POST, "/api/tokens", Least(Viewer), accounts::add_token)
        .at(
            M::DELETE,
            "/api/tokens/{id}",
            Least(Viewer),
            accounts::revoke_token,
        )
        .at(M::GET, "/api/users", Least(Admin), accounts::users)
        .at(M::POST, "/api/users", Least(Admin), accounts::add_user)
        .at(
            M::PATCH,
            "/api/users/{name}",
            Least(Admin),
            accounts::change_user,
        )
        .at(
            M::DELETE,
            "/api/users/{name}",
            Least(Admin),
            accounts::remove_user,
        )
        .at(M::GET, "/api/audit", Least(Admin), accounts::audit_log)
        .at(M::GET, "/api/openapi.json", Public, openapi::document)
        .at(M::GET, "/api/docs", Public, openapi::docs)
        .at(M::POST, "/login", Public, login::login)
        .at(M::POST, "/logout", Least(Viewer), login::logout)
}

/// Where the static bundle (WASM, JS, CSS, ECharts) is served.
pub const ASSETS_PREFIX: &str = "/pkg/";

/// The live WebSocket's path; it is served outside the compression layer.
const SOCKET_PATH: &str = "/ws";

/// Every route the router serves, with who may use it: the JSON routes,
/// the live socket, the Leptos pages and the server functions. Building
/// this panics if a page or server function has no rule, so a new one
/// cannot ship unguarded.
pub fn route_rules() -> Vec<Rule> {
    with_pages_and_socket(api_table().rules)
}

/// The JSON routes' rules with those of the socket, the assets, the
/// Leptos pages and the server functions.
fn with_pages_and_socket(mut rules: Vec<Rule>) -> Vec<Rule> {
    rules.push(Rule {
        method: Method::GET,
        path: ASSETS_PREFIX.to_owned(),
        access: Access::Public,
        kind: Kind::Asset,
    });
    rules.push(Rule {
        method: Method::GET,
        path: SOCKET_PATH.to_owned(),
        access: Access::Least(app::model::Role::Viewer),
        kind: Kind::Socket,
    });
    for listing in generate_route_list(app::App) {
        let path = listing.path().to_owned();
        for method in listing.methods() {
            rules.push(Rule {
                method: match method {
                    leptos_router::Method::Get => Method::GET,
                    leptos_router::Method::Post => Method::POST,
                    leptos_router::Method::Put => Method::PUT,
                    leptos_router::Method::Delete => Method::DELETE,
                    leptos_router::Method::Patch => Method::PATCH,
                },
                access: routes::page_access(&path),
                path: path.clone(),
                kind: Kind::Page,
            });
        }
    }
    for (path, method) in leptos::server_fn::axum::server_fn_paths() {
        rules.push(Rule {
            access: routes::server_fn_access(path),
            method,
            path: path.to_owned(),
            kind: Kind::ServerFn,
        });
    }
    rules
}

/// Builds the whole router, so tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    let backend: SharedBackend = Arc::new(PageData::from(&state));
    let routes = generate_route_list(app::App);
    let leptos = state.leptos.clone();
    let pkg = ServeDir::new(std::path::Path::new(&*leptos.site_root).join("pkg"));
    let api = api_table();
    let gate = Gate {
        auth: state.auth.clone(),
        rules: Arc::new(routes::Rules::new(&with_pages_and_socket(api.rules))),
        metrics: state.metrics.clone(),
    };
    let ws = Router::new()
        .route(SOCKET_PATH, get(live::websocket))
        .with_state(state.live.clone());

    Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || {
                guard::provide_request_context();
                provide_context(backend.clone());
            },
            move || app::shell(leptos.clone()),
        )
        .nest_service(
            "/pkg",
            // The bundle keeps fixed names, so browsers must revalidate it
            // or they would run a stale WASM against a new server.
            tower::ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::overriding(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache"),
                ))
                .service(pkg),
        )
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(guard::provide_request_context, app::shell))
        .merge(api.router)
        .with_state(state)
        // The WASM and ECharts shrink to about a third when gzipped, which
        // matters most on the phones this dashboard is meant for.
        .layer(CompressionLayer::new())
        .merge(ws)
        .route_layer(axum::middleware::from_fn_with_state(gate, guard::gate))
        .layer(axum::middleware::from_fn(guard::security_headers))
}

#[utoipa::path(get, path = "/api/health", tag = "operations", security(),
    responses((status = 200, description = "The server is up", body = String, content_type = "text/plain")))]
async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics`: every counter and histogram in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"), openapi::Refused))]
async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.prometheus(),
    )
}

/// Global counters.
#[utoipa::path(get, path = "/api/stats", tag = "operations",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Counters), openapi::Refused))]
async fn stats(State(metrics): State<Arc<Metrics>>) -> Json<Counters> {
    Json(metrics.snapshot())
}

/// Every device with its latest values and connection.
#[utoipa::path(get, path = "/api/devices", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Vec<DeviceSummary>), openapi::Refused))]
async fn devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceSummary>>, HttpError> {
    let mut list = state.store.devices().await?;
    for d in &mut list {
        d.rejected = state.metrics.rejected_for(&d.id);
    }
    state.presence.annotate(&mut list);
    Ok(Json(list))
}

/// The body of `POST /api/devices`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct AddDevice {
    id: String,
}

fn credentials(d: NewDevice) -> DeviceCredentials {
    DeviceCredentials {
        id: d.id,
        secret: d.secret,
    }
}

/// `POST /api/devices`: creates a device and returns its secret, once.
#[utoipa::path(post, path = "/api/devices", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    request_body = AddDevice,
    responses((status = 201, description = "Created; the secret is shown only here", body = DeviceCredentials),
        (status = 400, description = "Invalid id or body", body = openapi::ErrorBody),
        (status = 409, description = "The device already has a secret", body = openapi::ErrorBody),
        openapi::Refused))]
async fn add_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Result<Json<AddDevice>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<DeviceCredentials>), HttpError> {
    let body = json_body(body)?;
    let created = state.store.add_device(&body.id, now_ms()).await?;
    state
        .audit
        .record(
            &caller.name,
            action::DEVICE_ADD,
            Some(&created.id),
            None,
            ip,
        )
        .await;
    Ok((StatusCode::CREATED, Json(credentials(created))))
}

/// `PUT /api/devices/{id}/label` with a [`DeviceLabel`]: names a device
/// for people; `null` or blank removes the label.
#[utoipa::path(put, path = "/api/devices/{id}/label", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    request_body = DeviceLabel,
    responses((status = 204, description = "Label set or removed"),
        (status = 400, description = "Invalid label or body", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
async fn set_label(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<DeviceLabel>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let body = json_body(body)?;
    let label = app::model::clean_label(body.label.as_deref().unwrap_or(""))
        .map_err(HttpError::BadRequest)?;
    if !state.store.set_label(&id, label.as_deref()).await? {
        return Err(HttpError::NotFound);
    }
    state
        .audit
        .record(&caller.name, action::DEVICE_LABEL, Some(&id), label, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/devices/{id}/enabled` with `true` or `false`.
#[utoipa::path(put, path = "/api/devices/{id}/enabled", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    request_body(content = bool, description = "`true` to accept the device's logins, `false` to refuse them and end its sessions"),
    responses((status = 204, description = "Changed"),
        (status = 400, description = "Invalid body", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
async fn set_enabled(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<bool>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let enabled = json_body(body)?;
    state.store.set_disabled(&id, !enabled).await?;
    let ended = if enabled {
        0
    } else {
        state.sessions.disable(&id)
    };
    tracing::info!(device = %id, enabled, sessions_ended = ended, "device enabled state changed");
    let what = if enabled {
        action::DEVICE_ENABLE
    } else {
        action::DEVICE_DISABLE
    };
    state
        .audit
        .record(&caller.name, what, Some(&id), None, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/devices/{id}/commands` with a [`CommandRequest`]: accepts
/// the command, sends it if the device is subscribed (a persistent one is
/// stored first), and returns it (201). A non-persistent command to an
/// offline device comes back already failed, with the reason.
#[utoipa::path(post, path = "/api/devices/{id}/commands", tag = "commands",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    request_body = CommandRequest,
    responses((status = 201, description = "Accepted (and sent, if the device is subscribed)", body = Command),
        (status = 400, description = "Invalid command", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        (status = 413, description = "Params too large", body = openapi::ErrorBody),
        openapi::Refused))]
async fn send_command(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<CommandRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Command>), HttpError> {
    let Json(request) = body.map_err(|e| {
        Metrics::add(&state.metrics.commands.refused, 1);
        match e {
            axum::extract::rejection::JsonRejection::BytesRejection(_) => {
                HttpError::TooLarge(e.body_text())
            }
            e => HttpError::BadRequest(format!("invalid command: {}", e.body_text())),
        }
    })?;
    let command = state.commands.send(&id, request).await?;
    tracing::info!(device = %id, command = %command.id, name = %command.name, state = command.state.label(), "command accepted");
    record_command(&state.audit, &caller.name, &id, &command, ip).await;
    Ok((StatusCode::CREATED, Json(command)))
}

/// Writes a sent command to the audit log.
async fn record_command(audit: &Audit, actor: &str, device: &str, c: &Command, ip: Option<IpAddr>) {
    let detail = format!("{} {} ({})", c.name, c.params, c.id);
    audit
        .record(actor, action::COMMAND_SEND, Some(device), Some(detail), ip)
        .await;
}

/// The query of `GET /api/devices/{id}/commands`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CommandsQuery {
    /// How many commands, newest first (20 when absent, at most 500).
    limit: Option<u64>,
}

/// The most commands one list returns.
const MAX_COMMAND_LIST: u64 = 500;

/// `GET /api/devices/{id}/commands?limit=N`: the newest commands first
/// (20 unless asked).
#[utoipa::path(get, path = "/api/devices/{id}/commands", tag = "commands",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id"), CommandsQuery),
    responses((status = 200, body = Vec<Command>),
        (status = 400, description = "Invalid query", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
async fn device_commands(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<CommandsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Command>>, HttpError> {
    let axum::extract::Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    if !state.store.device_exists(&id).await? {
        return Err(HttpError::NotFound);
    }
    let limit = query.limit.unwrap_or(20).clamp(1, MAX_COMMAND_LIST);
    Ok(Json(state.commands.recent(&id, limit).await?))
}

/// `GET /api/commands/{id}`: one command as it is now.
#[utoipa::path(get, path = "/api/commands/{id}", tag = "commands",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Command id")),
    responses((status = 200, body = Command),
        (status = 404, description = "No such command", body = openapi::ErrorBody),
        openapi::Refused))]
async fn command(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Command>, HttpError> {
    state
        .commands
        .get(&id)
        .await?
        .map(Json)
        .ok_or(HttpError::NotFound)
}

/// One device with its last 15 minutes of readings.
#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceDetail),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
async fn device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, HttpError> {
    PageData::from(&state)
        .detail(&id, RECENT_WINDOW_MS)
        .await?
        .map(Json)
        .ok_or(HttpError::NotFound)
}

/// The pages' view of the store and counters.
struct PageData {
    store: Store,
    commands: Arc<Commands>,
    metrics: Arc<Metrics>,
    presence: Arc<Presence>,
    retain_raw: crate::store::retention::Retention,
    audit: Audit,
    auth: Arc<Auth>,
}

/// The account and address behind the page request being served, from
/// the request the gate annotated.
fn page_caller() -> (String, Option<IpAddr>) {
    let parts = leptos::prelude::use_context::<axum::http::request::Parts>();
    let get = |parts: &axum::http::request::Parts| {
        (
            parts.extensions.get::<Caller>().map(|c| c.name.clone()),
            parts.extensions.get::<ClientIp>().and_then(|c| c.0),
        )
    };
    let (name, ip) = parts.as_ref().map(get).unwrap_or_default();
    (name.unwrap_or_else(|| "unknown".to_owned()), ip)
}

impl From<&AppState> for PageData {
    fn from(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            commands: state.commands.clone(),
            metrics: state.metrics.clone(),
            presence: state.presence.clone(),
            retain_raw: state.retain_raw,
            audit: state.audit.clone(),
            auth: state.auth.clone(),
        }
    }
}

impl PageData {
    async fn detail(&self, id: &str, window_ms: i64) -> Result<Option<DeviceDetail>, StoreError> {
        let now = now_ms();
        let from = now - window_ms;
        Ok(self
            .store
            .device(id, from)
            .await?
            .map(|(mut summary, series)| {
                summary.rejected = self.metrics.rejected_for(&summary.id);
                summary.presence = self.presence.get(&summary.id);
                DeviceDetail {
                    summary,
                    series,
                    from,
                    counters: self.metrics.snapshot(),
                    generated_at: now,
                }
            }))
    }
}

impl Backend for PageData {
    fn fleet(&self) -> BoxFuture<'_, Result<Fleet, BackendError>> {
        Box::pin(async move {
            let mut devices = self.store.devices().await.map_err(log_for_page)?;
            for d in &mut devices {
                d.rejected = self.metrics.rejected_for(&d.id);
            }
            self.presence.annotate(&mut devices);
            Ok(Fleet {
                devices,
                counters: self.metrics.snapshot(),
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
            let request = history::SeriesRequest::parse(query, now, self.retain_raw)
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
            record_command(&self.audit, &actor, &id, &c, ip).await;
            Ok(c)
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

    fn add_device(&self, id: String) -> BoxFuture<'_, Result<DeviceCredentials, BackendError>> {
        let (actor, ip) = page_caller();
        Box::pin(async move {
            match self.store.add_device(&id, now_ms()).await {
                Ok(created) => {
                    self.audit
                        .record(&actor, action::DEVICE_ADD, Some(&created.id), None, ip)
                        .await;
                    Ok(credentials(created))
                }
                Err(RegistryError::Store(e)) => Err(log_for_page(e)),
                Err(e) => Err(BackendError::Invalid(e.to_string())),
            }
        })
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
