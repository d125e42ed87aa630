//! Device routes: the fleet list, one device, and the operator's changes
//! (register, label, enable or disable, rotate the secret, delete), which
//! the device page makes through the same [`Manage`].

use app::api::RECENT_WINDOW_MS;
use app::model::{DeviceCredentials, DeviceDetail, DeviceLabel, DeviceSummary};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::{json_body, HttpError};
use super::guard::ClientIp;
use super::pages::PageData;
use super::{openapi, AppState};
use crate::audit::action;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::store::registry::{NewDevice, RegistryError};

/// Every device with its latest values and connection.
#[utoipa::path(get, path = "/api/devices", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Vec<DeviceSummary>), openapi::Refused))]
pub(super) async fn devices(
    State(state): State<AppState>,
) -> Result<Json<Vec<DeviceSummary>>, HttpError> {
    let mut list = state.store.devices().await?;
    for d in &mut list {
        d.rejected = state.metrics.rejected_everywhere(&d.id);
    }
    state.presence.annotate(&mut list);
    Ok(Json(list))
}

/// The body of `POST /api/devices`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct AddDevice {
    id: String,
}

/// A new secret as the operator sees it, with where the broker listens.
pub(super) fn credentials(d: NewDevice, broker: Option<(u16, bool)>) -> DeviceCredentials {
    DeviceCredentials {
        id: d.id,
        secret: d.secret,
        mqtt_port: broker.map(|(port, _)| port),
        mqtt_tls: broker.is_some_and(|(_, tls)| tls),
    }
}

/// `POST /api/devices`: creates a device and returns its secret, once.
#[utoipa::path(post, path = "/api/devices", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    request_body = AddDevice,
    responses((status = 201, description = "Created; the secret is shown only here", body = DeviceCredentials),
        (status = 400, description = "Invalid id or body", body = openapi::ErrorBody),
        (status = 409, description = "A device with this id already exists", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn add_device(
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
    Ok((
        StatusCode::CREATED,
        Json(credentials(created, state.broker)),
    ))
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
pub(super) async fn set_label(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<DeviceLabel>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let body = json_body(body)?;
    let label = app::model::clean_label(body.label.as_deref().unwrap_or(""))
        .map_err(HttpError::BadRequest)?;
    Manage::from(&state)
        .set_label(&id, label, &caller.name, ip)
        .await?;
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
pub(super) async fn set_enabled(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<bool>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let enabled = json_body(body)?;
    Manage::from(&state)
        .set_enabled(&id, enabled, &caller.name, ip)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/devices/{id}/secret`: gives the device a new secret, shown
/// only here. The old one stops working at the device's next login.
#[utoipa::path(post, path = "/api/devices/{id}/secret", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The new secret; shown only here", body = DeviceCredentials),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn rotate_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
) -> Result<Json<DeviceCredentials>, HttpError> {
    let rotated = Manage::from(&state).rotate(&id, &caller.name, ip).await?;
    Ok(Json(rotated))
}

/// The query of `DELETE /api/devices/{id}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct DeleteQuery {
    /// Keep the device's readings: it leaves the fleet and the broker, its
    /// history stays exportable, and adding the id again brings it back.
    #[serde(default)]
    keep_data: bool,
}

/// `DELETE /api/devices/{id}`: deletes the device and ends its sessions.
#[utoipa::path(delete, path = "/api/devices/{id}", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id"), DeleteQuery),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "Invalid query", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn delete_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, HttpError> {
    let query = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    Manage::from(&state)
        .delete(&id, query.keep_data, &caller.name, ip)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The operator's changes to a device, shared by the JSON API and the
/// device page: each is applied, its consequences for live sessions
/// carried out (here and, in cluster mode, on every instance), and
/// audited.
pub(super) struct Manage {
    store: crate::store::Store,
    sessions: std::sync::Arc<crate::edge::Sessions>,
    bus: Option<crate::bus::Bus>,
    audit: crate::audit::Audit,
    broker: Option<(u16, bool)>,
}

impl From<&AppState> for Manage {
    fn from(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            sessions: state.sessions.clone(),
            bus: state.bus.clone(),
            audit: state.audit.clone(),
            broker: state.broker,
        }
    }
}

type Ip = Option<std::net::IpAddr>;

impl Manage {
    /// Ends the device's sessions on every instance; `deleted` also tells
    /// the other instances' writers to look ids up again.
    fn end_sessions(&self, id: &str, deleted: bool) -> usize {
        if let Some(bus) = &self.bus {
            bus.tell(&crate::bus::Remote::Disabled {
                device: id.to_owned(),
                deleted,
            });
        }
        self.sessions.disable(id)
    }

    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        actor: &str,
        ip: Ip,
    ) -> Result<(), RegistryError> {
        self.store.set_disabled(id, !enabled).await?;
        let ended = if enabled {
            0
        } else {
            self.end_sessions(id, false)
        };
        tracing::info!(device = %id, enabled, sessions_ended = ended, "device enabled state changed");
        let what = if enabled {
            action::DEVICE_ENABLE
        } else {
            action::DEVICE_DISABLE
        };
        self.audit.record(actor, what, Some(id), None, ip).await;
        Ok(())
    }

    pub async fn set_label(
        &self,
        id: &str,
        label: Option<String>,
        actor: &str,
        ip: Ip,
    ) -> Result<(), RegistryError> {
        if !self.store.set_label(id, label.as_deref()).await? {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        self.audit
            .record(actor, action::DEVICE_LABEL, Some(id), label, ip)
            .await;
        Ok(())
    }

    pub async fn rotate(
        &self,
        id: &str,
        actor: &str,
        ip: Ip,
    ) -> Result<DeviceCredentials, RegistryError> {
        let rotated = self.store.rotate_secret(id).await?;
        tracing::info!(device = %id, "device secret rotated");
        self.audit
            .record(actor, action::DEVICE_ROTATE, Some(id), None, ip)
            .await;
        Ok(credentials(rotated, self.broker))
    }

    pub async fn delete(
        &self,
        id: &str,
        keep_data: bool,
        actor: &str,
        ip: Ip,
    ) -> Result<(), RegistryError> {
        self.store.delete_device(id, keep_data, now_ms()).await?;
        let ended = self.end_sessions(id, true);
        tracing::info!(device = %id, keep_data, sessions_ended = ended, "device deleted");
        let detail = if keep_data {
            "readings kept"
        } else {
            "with its readings"
        };
        self.audit
            .record(
                actor,
                action::DEVICE_DELETE,
                Some(id),
                Some(detail.to_owned()),
                ip,
            )
            .await;
        Ok(())
    }
}

/// One device with its last 15 minutes of readings.
#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceDetail),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, HttpError> {
    PageData::from(&state)
        .detail(&id, RECENT_WINDOW_MS)
        .await?
        .map(Json)
        .ok_or(HttpError::NotFound)
}
