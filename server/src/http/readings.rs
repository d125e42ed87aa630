//! HTTP ingest: readings from devices that cannot hold an MQTT connection
//! (cellular modems that wake, send and sleep; LoRaWAN network servers that
//! forward uplinks by webhook). The payloads are the MQTT ones, the device
//! proves itself with its own secret, it is held to the same publish rate,
//! and a request is answered 200 only once its readings are committed.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;

use super::AppState;
use crate::acl::{Telemetry, THINGSBOARD_TELEMETRY};
use crate::clock::now_ms;
use crate::ingest::Rejection;
use crate::metrics::Metrics;
use crate::names::valid_name;
use crate::store::queue::Committed;
use crate::store::registry::Login;

/// How long a request waits for its readings to be committed before it is
/// answered 503. The writer retries a failing database for as long as it
/// takes, so the readings may still be stored later: a client that sends
/// them again with their own `ts` is recognised (see
/// [`crate::store::queue::Arrival::maybe_again`]).
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// What a committed request answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"stored": 2}))]
pub struct Stored {
    /// Readings committed.
    pub stored: usize,
}

/// What a refused payload answers: the error and every reason, one per bad
/// field, as the MQTT side logs them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "payload refused; nothing was stored", "reasons": ["field \"mode\" is not a number"]}))]
pub struct Refused {
    pub error: String,
    pub reasons: Vec<String>,
}

/// Why a request was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("payload refused; nothing was stored")]
    Invalid(Vec<Rejection>),
    #[error("{0}")]
    TooLarge(String),
    #[error("the device is above its publish rate (--max-publish-rate); retry after the Retry-After seconds")]
    Throttled(Duration),
    #[error("{0}")]
    Unavailable(&'static str),
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let body = |status: StatusCode| {
            (status, Json(serde_json::json!({ "error": message }))).into_response()
        };
        match self {
            Self::Unauthorized(_) => {
                let mut response = body(StatusCode::UNAUTHORIZED);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"sightline devices\""),
                );
                response
            }
            Self::Forbidden(_) => body(StatusCode::FORBIDDEN),
            Self::Invalid(reasons) => (
                StatusCode::BAD_REQUEST,
                Json(Refused {
                    error: message,
                    reasons: reasons.iter().map(ToString::to_string).collect(),
                }),
            )
                .into_response(),
            Self::TooLarge(_) => body(StatusCode::PAYLOAD_TOO_LARGE),
            Self::Throttled(wait) => {
                let mut response = body(StatusCode::TOO_MANY_REQUESTS);
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                response
            }
            Self::Unavailable(_) => body(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// `POST /api/v1/{token}/telemetry`: ThingsBoard's HTTP device API. The
/// token is the device's secret, as on MQTT's ThingsBoard login.
#[utoipa::path(post, path = "/api/v1/{token}/telemetry", tag = "ingest",
    extensions(("x-required-role" = json!("device"))),
    params(("token" = String, Path, description = "The device's secret (ThingsBoard's access token)")),
    request_body(content = serde_json::Value, description = "ThingsBoard telemetry: `{\"temp\":21.5}`, `{\"ts\":1700000000000,\"values\":{\"temp\":21.5}}`, or an array of those",
        example = json!({"temperature": 21.5, "humidity": 40})),
    responses((status = 200, description = "Committed", body = Stored),
        (status = 400, description = "The payload was refused as a whole, with every reason", body = Refused),
        (status = 401, description = "No device has this token", body = super::openapi::ErrorBody),
        (status = 403, description = "The device is disabled or deleted", body = super::openapi::ErrorBody),
        (status = 413, description = "Over --max-payload-bytes", body = super::openapi::ErrorBody),
        (status = 429, description = "Above the device's publish rate; see Retry-After", body = super::openapi::ErrorBody),
        (status = 503, description = "Shutting down, or the database is not committing", body = super::openapi::ErrorBody)))]
pub(super) async fn thingsboard(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Json<Stored>, IngestError> {
    let device = authenticate(&state, &token, None).await?;
    accept(
        &state,
        &device,
        THINGSBOARD_TELEMETRY,
        Telemetry::ThingsBoard,
        &body,
    )
    .await
}

/// `POST /api/devices/{id}/readings`: the device's readings, with its id
/// and secret as HTTP Basic credentials.
#[utoipa::path(post, path = "/api/devices/{id}/readings", tag = "ingest",
    security(("device" = [])),
    extensions(("x-required-role" = json!("device"))),
    params(("id" = String, Path, description = "Device id; the Basic user name must be the same")),
    request_body(content = serde_json::Value, description = "What the device would publish on `sensor/<id>`: `{\"temp\":21.5,\"ts\":1700000000000}`, or an array of such objects",
        example = json!({"temperature": 21.5, "humidity": 40})),
    responses((status = 200, description = "Committed", body = Stored),
        (status = 400, description = "The payload was refused as a whole, with every reason", body = Refused),
        (status = 401, description = "Missing or wrong credentials", body = super::openapi::ErrorBody),
        (status = 403, description = "The device is disabled or deleted", body = super::openapi::ErrorBody),
        (status = 413, description = "Over --max-payload-bytes", body = super::openapi::ErrorBody),
        (status = 429, description = "Above the device's publish rate; see Retry-After", body = super::openapi::ErrorBody),
        (status = 503, description = "Shutting down, or the database is not committing", body = super::openapi::ErrorBody)))]
pub(super) async fn device(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Stored>, IngestError> {
    let Some((user, secret)) = basic(&headers) else {
        Metrics::add(&state.metrics.http_ingest.unauthorized, 1);
        return Err(IngestError::Unauthorized(
            "send the device id and its secret as HTTP Basic credentials",
        ));
    };
    if user != id {
        Metrics::add(&state.metrics.http_ingest.unauthorized, 1);
        return Err(IngestError::Unauthorized(
            "the Basic user name must be the device id of the path",
        ));
    }
    let device = authenticate(&state, &user, Some(&secret)).await?;
    let topic = format!("sensor/{device}");
    accept(&state, &device, &topic, Telemetry::Sensor, &body).await
}

/// The `user:password` of an `Authorization: Basic` header.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = super::guard::authorization(headers, "basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The device these credentials belong to. Refusals are counted like MQTT
/// logins and, when the device exists, shown on its page.
async fn authenticate(
    state: &AppState,
    user: &str,
    password: Option<&str>,
) -> Result<String, IngestError> {
    let metrics = &state.metrics;
    let refuse = |device: Option<&str>, why: &'static str| {
        Metrics::add(&metrics.http_ingest.unauthorized, 1);
        metrics.refuse_login(&metrics.edge.logins_refused, device, why, now_ms());
    };
    // Over HTTP there is no anonymous first publish to name a device, so
    // open registration does not apply: only a device with a secret may
    // send, which is also what keeps the check one indexed lookup.
    let login = state.store.login(user, password).await.map_err(|e| {
        tracing::error!("cannot check a device's HTTP credentials: {e}");
        IngestError::Unavailable("the database is unavailable")
    })?;
    let named = valid_name(user).then_some(user);
    match login {
        Login::Device(id) => Ok(id),
        Login::Unsecured(id) => {
            refuse(Some(&id), "it has no secret, which HTTP ingest needs");
            Err(IngestError::Unauthorized(
                "the device has no secret yet; give it one with \"Rotate secret\"",
            ))
        }
        Login::BadSecret => {
            refuse(named, crate::edge::BAD_SECRET);
            Err(IngestError::Unauthorized("wrong device secret"))
        }
        Login::Unknown => {
            refuse(None, "unknown device");
            Err(IngestError::Unauthorized("no device has these credentials"))
        }
        Login::Disabled(id) => {
            refuse(Some(&id), crate::edge::DISABLED);
            Err(IngestError::Forbidden("the device is disabled"))
        }
        Login::Removed(id) => {
            refuse(Some(&id), crate::edge::DELETED);
            Err(IngestError::Forbidden("the device was deleted"))
        }
    }
}

/// Decodes, rate-checks, queues and waits for the commit of one request.
async fn accept(
    state: &AppState,
    device: &str,
    topic: &str,
    telemetry: Telemetry,
    body: &[u8],
) -> Result<Json<Stored>, IngestError> {
    let metrics = &state.metrics;
    Metrics::add(&metrics.http_ingest.requests, 1);
    let at = Instant::now();
    if let Err(wait) = state.device_rates.take(device, at) {
        metrics.refuse(&metrics.http_ingest.throttled, Some(device));
        return Err(IngestError::Throttled(wait));
    }
    let Some(ingest) = state.ingest.get() else {
        return Err(IngestError::Unavailable("the server is shutting down"));
    };
    let received_ms = now_ms();
    let readings = ingest
        .decode_whole(device, topic, telemetry, body, received_ms)
        .map_err(|reasons| match reasons.as_slice() {
            [Rejection::Oversized { .. }] => IngestError::TooLarge(reasons[0].to_string()),
            _ => IngestError::Invalid(reasons),
        })?;
    let stored = readings.len();
    // Readings with the device's own `ts` are recognised if the client sends
    // them again after a lost answer; those stamped here are new each time.
    let maybe_again = readings.iter().all(|r| r.ts != received_ms);
    let (committed, mut heard): (Committed, _) = tokio::sync::mpsc::unbounded_channel();
    // One deadline for the wait for room in the writer's queue and for the
    // commit: a stalled database must not hold the request for ever.
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    let queued = tokio::time::timeout_at(
        deadline,
        ingest.queue_acked(readings, at, (committed, 0), maybe_again),
    )
    .await;
    // The request must not hold the writer's queue open while it waits.
    drop(ingest);
    if queued.is_err() {
        return Err(IngestError::Unavailable(
            "the database writer is saturated; nothing was stored, send the readings again",
        ));
    }
    match tokio::time::timeout_at(deadline, heard.recv()).await {
        Ok(Some(_)) => {
            Metrics::add(&metrics.http_ingest.stored, 1);
            Ok(Json(Stored { stored }))
        }
        Ok(None) => Err(IngestError::Unavailable(
            "the readings could not be stored (the server is shutting down or the database failed)",
        )),
        Err(_) => Err(IngestError::Unavailable(
            "the database has not committed the readings in 30 s; they may still be stored",
        )),
    }
}
