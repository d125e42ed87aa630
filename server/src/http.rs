//! HTTP: the server-rendered dashboard, its static assets, the JSON API and
//! the live WebSocket, all on one axum router.

use std::sync::Arc;

use app::api::{Backend, BoxFuture, CommandForm, HistoryWindow, SharedBackend, RECENT_WINDOW_MS};
use app::model::{
    Command, CommandRequest, Counters, DeviceCredentials, DeviceDetail, DeviceSummary, Fleet,
    SeriesResponse,
};
use axum::extract::{FromRef, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::command::{wire::Refusal, CommandError, Commands};
use crate::edge::Sessions;
use crate::history;
use crate::ingest::now_ms;
use crate::live::{self, Live};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::store::registry::{NewDevice, RegistryError};
use crate::store::{Store, StoreError};

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
    #[error(transparent)]
    Store(#[from] StoreError),
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

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
            Self::Conflict(why) => (StatusCode::CONFLICT, why.clone()),
            Self::TooLarge(why) => (StatusCode::PAYLOAD_TOO_LARGE, why.clone()),
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

/// Builds the whole router, so tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    let backend: SharedBackend = Arc::new(PageData::from(&state));
    let routes = generate_route_list(app::App);
    let leptos = state.leptos.clone();
    let pkg = ServeDir::new(std::path::Path::new(&*leptos.site_root).join("pkg"));

    let api = Router::new()
        .route("/api/health", get(health))
        .route("/api/stats", get(stats))
        .route("/metrics", get(prometheus))
        .route("/api/devices", get(devices).post(add_device))
        .route("/api/devices/{id}", get(device))
        .route("/api/devices/{id}/enabled", put(set_enabled))
        .route("/api/devices/{id}/export", get(crate::export::export))
        .route("/api/devices/{id}/series", get(crate::history::series))
        .route(
            "/api/devices/{id}/commands",
            get(device_commands).post(send_command),
        )
        .route("/api/commands/{id}", get(command))
        .with_state(state.clone());
    let ws = Router::new()
        .route("/ws", get(live::websocket))
        .with_state(state.live.clone());

    Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(backend.clone()),
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
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(
            app::shell,
        ))
        .with_state(state)
        .merge(api)
        // The WASM and ECharts shrink to about a third when gzipped, which
        // matters most on the phones this dashboard is meant for.
        .layer(CompressionLayer::new())
        .merge(ws)
}

async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics`: every counter and histogram in Prometheus text format.
async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.prometheus(),
    )
}

async fn stats(State(metrics): State<Arc<Metrics>>) -> Json<Counters> {
    Json(metrics.snapshot())
}

async fn devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceSummary>>, HttpError> {
    let mut list = state.store.devices().await?;
    for d in &mut list {
        d.rejected = state.metrics.rejected_for(&d.id);
    }
    state.presence.annotate(&mut list);
    Ok(Json(list))
}

/// The body of `POST /api/devices`.
#[derive(Debug, serde::Deserialize)]
struct AddDevice {
    id: String,
}

fn credentials(d: NewDevice) -> DeviceCredentials {
    DeviceCredentials {
        id: d.id,
        secret: d.secret,
    }
}

/// `POST /api/devices`: creates a device and returns its secret, once.
async fn add_device(
    State(state): State<AppState>,
    body: Result<Json<AddDevice>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<DeviceCredentials>), HttpError> {
    let Json(body) = body.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let created = state.store.add_device(&body.id, now_ms()).await?;
    tracing::info!(device = %created.id, "device created");
    Ok((StatusCode::CREATED, Json(credentials(created))))
}

/// `PUT /api/devices/{id}/enabled` with `true` or `false`.
async fn set_enabled(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<bool>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let Json(enabled) = body.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    state.store.set_disabled(&id, !enabled).await?;
    let ended = if enabled {
        0
    } else {
        state.sessions.disable(&id)
    };
    tracing::info!(device = %id, enabled, sessions_ended = ended, "device enabled state changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/devices/{id}/commands` with a [`CommandRequest`]: accepts
/// the command, sends it if the device is subscribed (a persistent one is
/// stored first), and returns it (201). A non-persistent command to an
/// offline device comes back already failed, with the reason.
async fn send_command(
    State(state): State<AppState>,
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
    Ok((StatusCode::CREATED, Json(command)))
}

/// The query of `GET /api/devices/{id}/commands`.
#[derive(Debug, serde::Deserialize)]
struct CommandsQuery {
    limit: Option<u64>,
}

/// The most commands one list returns.
const MAX_COMMAND_LIST: u64 = 500;

/// `GET /api/devices/{id}/commands?limit=N`: the newest commands first
/// (20 unless asked).
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
}

impl From<&AppState> for PageData {
    fn from(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            commands: state.commands.clone(),
            metrics: state.metrics.clone(),
            presence: state.presence.clone(),
            retain_raw: state.retain_raw,
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
    fn fleet(&self) -> BoxFuture<'_, Result<Fleet, String>> {
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
    ) -> BoxFuture<'_, Result<Option<DeviceDetail>, String>> {
        Box::pin(async move { self.detail(&id, window_ms).await.map_err(log_for_page) })
    }

    fn history(
        &self,
        id: String,
        window: HistoryWindow,
        points: usize,
        tz: String,
    ) -> BoxFuture<'_, Result<Option<SeriesResponse>, String>> {
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
                .map_err(|e| e.to_string())?;
            history::load(&self.store, &id, &request)
                .await
                .map_err(log_for_page)
        })
    }

    fn commands(&self, id: String) -> BoxFuture<'_, Result<Vec<Command>, String>> {
        Box::pin(async move { self.page_commands(&id).await })
    }

    fn send_command(
        &self,
        id: String,
        form: CommandForm,
    ) -> BoxFuture<'_, Result<Command, String>> {
        Box::pin(async move { self.page_send(&id, form).await })
    }

    fn add_device(&self, id: String) -> BoxFuture<'_, Result<DeviceCredentials, String>> {
        Box::pin(async move {
            match self.store.add_device(&id, now_ms()).await {
                Ok(created) => {
                    tracing::info!(device = %created.id, "device created from the dashboard");
                    Ok(credentials(created))
                }
                Err(RegistryError::Store(e)) => Err(log_for_page(e)),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Commands the device page lists.
const PAGE_COMMANDS: u64 = 20;

impl PageData {
    async fn page_commands(&self, id: &str) -> Result<Vec<Command>, String> {
        self.commands
            .recent(id, PAGE_COMMANDS)
            .await
            .map_err(log_for_page)
    }

    async fn page_send(&self, id: &str, form: CommandForm) -> Result<Command, String> {
        let params = app::model::parse_params(&form.params)
            .inspect_err(|_| Metrics::add(&self.metrics.commands.refused, 1))?;
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
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Logs a store error behind a page and gives the page a neutral message.
fn log_for_page(e: StoreError) -> String {
    tracing::error!("page data failed: {e}");
    "the database is unavailable".to_owned()
}
