//! Command routes: send a command to a device, list a device's commands,
//! and read one.

use app::model::{Command, CommandRequest};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::HttpError;
use super::guard::ClientIp;
use super::{openapi, AppState};
use crate::auth::Caller;
use crate::metrics::Metrics;

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
        (status = 429, description = "--max-session-queue commands already wait for the offline device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn send_command(
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
    state
        .audit
        .command_sent(&caller.name, &id, &command, ip)
        .await;
    Ok((StatusCode::CREATED, Json(command)))
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
pub(super) async fn device_commands(
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
pub(super) async fn command(
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
