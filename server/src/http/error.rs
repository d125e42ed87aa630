//! The API's errors: what each failure below answers with, and the one
//! place an internal failure is logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::AuthError;
use crate::command::{wire::Refusal, CommandError};
use crate::store::registry::RegistryError;
use crate::store::StoreError;
use crate::{export, history};

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
    /// The database failed; the caller is not at fault.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sign-in machinery failed (hashing a password); the caller is not at
    /// fault either.
    #[error(transparent)]
    Auth(AuthError),
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(_) => Self::BadRequest(e.to_string()),
            AuthError::Exists(_) | AuthError::Refused(_) => Self::Conflict(e.to_string()),
            AuthError::NotFound(_) => Self::NotFound,
            AuthError::WrongCredentials | AuthError::Throttled(_) => Self::Forbidden(e.to_string()),
            AuthError::Hashing(_) => Self::Auth(e),
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
            CommandError::QueueFull { .. } => Self::Throttled(e.to_string()),
            CommandError::Store(e) => Self::Store(e),
        }
    }
}

impl From<crate::store::services::ServiceError> for HttpError {
    fn from(e: crate::store::services::ServiceError) -> Self {
        use crate::store::services::ServiceError;
        match e {
            ServiceError::Exists(_) | ServiceError::DeviceName(_) => Self::Conflict(e.to_string()),
            ServiceError::NotFound(_) => Self::NotFound,
            ServiceError::Store(e) => Self::Store(e),
            e => Self::BadRequest(e.to_string()),
        }
    }
}

impl From<crate::desired::DesiredError> for HttpError {
    fn from(e: crate::desired::DesiredError) -> Self {
        use crate::desired::DesiredError;
        match e {
            DesiredError::UnknownDevice(_) => Self::NotFound,
            DesiredError::TooLarge { .. } => Self::TooLarge(e.to_string()),
            DesiredError::Null => Self::BadRequest(e.to_string()),
            DesiredError::Store(e) => Self::Store(e),
        }
    }
}

impl From<history::QueryError> for HttpError {
    fn from(e: history::QueryError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<export::BadQuery> for HttpError {
    fn from(e: export::BadQuery) -> Self {
        Self::BadRequest(e.to_string())
    }
}

/// A JSON body, or 400 with why it could not be read (413 if it was over
/// `--max-request-bytes`).
pub(crate) fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, HttpError> {
    body.map(|Json(b)| b).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::TooLarge(e.body_text())
        } else {
            HttpError::BadRequest(e.body_text())
        }
    })
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
            // The one place an API request's internal failure is logged.
            Self::Store(_) | Self::Auth(_) => {
                tracing::error!("API request failed: {self}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
