//! Service account routes (admin): the MQTT logins that tools such as
//! Node-RED or a Python script use to read the feed of committed readings.

use app::model::{CreatedServiceAccount, NewServiceAccount, ServiceAccount};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::guard::ClientIp;
use super::openapi::{ErrorBody, Refused};
use super::{json_body, AppState, HttpError};
use crate::audit::action;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::store::services::Grants;

/// `GET /api/service-accounts`: every service account with its grants.
#[utoipa::path(get, path = "/api/service-accounts", tag = "accounts",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("admin"))),
    responses((status = 200, body = Vec<ServiceAccount>), Refused))]
pub(super) async fn list(
    State(state): State<AppState>,
) -> Result<Json<Vec<ServiceAccount>>, HttpError> {
    Ok(Json(state.store.service_accounts().await?))
}

/// `POST /api/service-accounts`: makes one and returns its secret, once.
#[utoipa::path(post, path = "/api/service-accounts", tag = "accounts",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("admin"))),
    request_body = NewServiceAccount,
    responses((status = 201, body = CreatedServiceAccount),
        (status = 400, description = "Invalid name, grant or body", body = ErrorBody),
        (status = 409, description = "The name is taken, by a service account or a device", body = ErrorBody),
        Refused))]
pub(super) async fn add(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    request: Result<Json<NewServiceAccount>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedServiceAccount>), HttpError> {
    let request = json_body(request)?;
    let grants = Grants {
        subscribe: request.subscribe,
        publish: request.publish,
    };
    let made = state
        .store
        .add_service_account(&request.name, &grants, &caller.name, now_ms())
        .await?;
    state
        .audit
        .service_added(&caller.name, &made.account, ip)
        .await;
    Ok((StatusCode::CREATED, Json(made)))
}

/// `DELETE /api/service-accounts/{name}`: removes one; its connections on
/// this instance end at once.
#[utoipa::path(delete, path = "/api/service-accounts/{name}", tag = "accounts",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("admin"))),
    params(("name" = String, Path, description = "Service account name")),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "No such service account", body = ErrorBody),
        Refused))]
pub(super) async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(name): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.store.remove_service_account(&name).await?;
    let ended = state.feed.end_account(&name);
    tracing::info!(account = %name, sessions_ended = ended, "service account removed");
    state
        .audit
        .record(&caller.name, action::SERVICE_REMOVE, Some(&name), None, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
