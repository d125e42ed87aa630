//! The JSON API of accounts: the caller's own account and API tokens, the
//! accounts admins manage, and the audit log.

use std::sync::Arc;

use app::model::{
    Account, AccountChange, ApiToken, AuditEntry, CreatedApiToken, Me, NewAccount, NewApiToken,
    PasswordChange,
};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use super::guard::ClientIp;
use super::openapi::{ErrorBody, Refused};
use super::{json_body, HttpError};
use crate::audit::{action, Audit};
use crate::auth::{Auth, AuthError, Caller, Via};
use crate::store::accounts::AccountRow;

/// Refuses callers that signed in with an API token: minting tokens,
/// creating accounts, changing roles and setting passwords need the person
/// at the dashboard, so that a leaked token cannot make itself permanent
/// (by minting a token, or an admin it knows the password of).
fn session_only(caller: &Caller) -> Result<(), HttpError> {
    match caller.via {
        Via::Session(_) => Ok(()),
        Via::Token(_) => Err(HttpError::Forbidden(
            "this needs a dashboard session, not an API token".to_owned(),
        )),
    }
}

/// `GET /api/me`: who the caller is.
#[utoipa::path(get, path = "/api/me", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Me), Refused))]
pub async fn me(Extension(me): Extension<Me>) -> Json<Me> {
    Json(me)
}

/// `PUT /api/me/password`: changes the caller's password, given the current
/// one, and ends every session of the account.
#[utoipa::path(put, path = "/api/me/password", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("viewer"))),
    request_body = PasswordChange,
    responses((status = 204, description = "Changed; every session of the account has ended"),
        (status = 400, description = "Invalid body or new password", body = ErrorBody),
        (status = 403, description = "Wrong current password, not a dashboard session, or refused", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords lately", body = ErrorBody),
        (status = 401, description = "No valid session or token", body = ErrorBody)))]
pub async fn change_own_password(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    change: Result<Json<PasswordChange>, JsonRejection>,
) -> Result<StatusCode, HttpError> {
    session_only(&caller)?;
    let change = json_body(change)?;
    auth.confirm_password(&caller.name, &change.current, ip)
        .await
        .map_err(|e| match e {
            AuthError::WrongCredentials => {
                HttpError::Forbidden("the current password is wrong".to_owned())
            }
            e => e.into(),
        })?;
    auth.set_password(&caller.name, &change.new, false).await?;
    audit
        .record(
            &caller.name,
            action::PASSWORD_CHANGE,
            Some(&caller.name),
            None,
            ip,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/tokens`: the caller's API tokens, without their secrets.
#[utoipa::path(get, path = "/api/tokens", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Vec<ApiToken>), Refused))]
pub async fn tokens(
    State(auth): State<Arc<Auth>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<ApiToken>>, HttpError> {
    Ok(Json(auth.store().tokens(caller.account_id).await?))
}

/// `POST /api/tokens`: creates an API token with the caller's role; its
/// secret is in this response only.
#[utoipa::path(post, path = "/api/tokens", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("viewer"))),
    request_body = NewApiToken,
    responses((status = 201, description = "Created; the token is shown only here", body = CreatedApiToken),
        (status = 400, description = "Invalid label or body", body = ErrorBody),
        (status = 401, description = "No valid session or token", body = ErrorBody),
        (status = 403, description = "Signed in with an API token, not a dashboard session", body = ErrorBody),
        (status = 409, description = "The account holds --max-tokens-per-account tokens already", body = ErrorBody)))]
pub async fn add_token(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    request: Result<Json<NewApiToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedApiToken>), HttpError> {
    session_only(&caller)?;
    let request = json_body(request)?;
    let created = create_token(&auth, &audit, &caller, ip, &request.label).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Creates a token for the caller's account and audits it; shared by the
/// API and the account page, which each check the caller signed in with a
/// session first.
pub(super) async fn create_token(
    auth: &Auth,
    audit: &Audit,
    caller: &Caller,
    ip: Option<std::net::IpAddr>,
    label: &str,
) -> Result<CreatedApiToken, AuthError> {
    let created = auth.add_token(caller.account_id, label).await?;
    audit
        .record(
            &caller.name,
            action::TOKEN_ADD,
            Some(&created.id),
            Some(created.label.clone()),
            ip,
        )
        .await;
    Ok(created)
}

/// Revokes one of the caller's tokens and audits it; `false` if the
/// caller has no such token. Shared by the API and the account page.
pub(super) async fn revoke_own_token(
    auth: &Auth,
    audit: &Audit,
    caller: &Caller,
    ip: Option<std::net::IpAddr>,
    id: &str,
) -> Result<bool, crate::store::StoreError> {
    if !auth.revoke_token(caller.account_id, id).await? {
        return Ok(false);
    }
    audit
        .record(&caller.name, action::TOKEN_REVOKE, Some(id), None, ip)
        .await;
    Ok(true)
}

/// `DELETE /api/tokens/{id}`: revokes one of the caller's tokens at once.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"),
        (status = 404, description = "The caller has no such token", body = ErrorBody), Refused))]
pub async fn revoke_token(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    if !revoke_own_token(&auth, &audit, &caller, ip, &id).await? {
        return Err(HttpError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/users`: every account.
#[utoipa::path(get, path = "/api/users", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("admin"))),
    responses((status = 200, body = Vec<Account>), Refused))]
pub async fn users(State(auth): State<Arc<Auth>>) -> Result<Json<Vec<Account>>, HttpError> {
    Ok(Json(auth.store().accounts().await?))
}

async fn account(auth: &Auth, name: &str) -> Result<Account, HttpError> {
    auth.store()
        .account(name)
        .await?
        .map(AccountRow::into_account)
        .ok_or(HttpError::NotFound)
}

/// `POST /api/users`: creates an account.
#[utoipa::path(post, path = "/api/users", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("admin"))),
    request_body = NewAccount,
    responses((status = 201, body = Account),
        (status = 400, description = "Invalid name, password or body", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 401, description = "No valid session or token", body = ErrorBody),
        (status = 403, description = "Not an admin, or an API token (creating accounts needs a dashboard session)", body = ErrorBody)))]
pub async fn add_user(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    request: Result<Json<NewAccount>, JsonRejection>,
) -> Result<(StatusCode, Json<Account>), HttpError> {
    session_only(&caller)?;
    let request = json_body(request)?;
    auth.add_account(&request.name, &request.password, request.role)
        .await?;
    audit
        .record(
            &caller.name,
            action::ACCOUNT_ADD,
            Some(&request.name),
            Some(request.role.label().to_owned()),
            ip,
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(account(&auth, &request.name).await?),
    ))
}

/// `PATCH /api/users/{name}`: changes an account's role or password.
#[utoipa::path(patch, path = "/api/users/{name}", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("admin"))),
    params(("name" = String, Path, description = "Account name")),
    request_body = AccountChange,
    responses((status = 200, body = Account),
        (status = 400, description = "Invalid password or body", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The last admin cannot be demoted", body = ErrorBody),
        (status = 401, description = "No valid session or token", body = ErrorBody),
        (status = 403, description = "Not an admin, an API token (changing accounts needs a dashboard session), or an admin resetting their own password here", body = ErrorBody)))]
pub async fn change_user(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(name): Path<String>,
    change: Result<Json<AccountChange>, JsonRejection>,
) -> Result<Json<Account>, HttpError> {
    session_only(&caller)?;
    let change = json_body(change)?;
    account(&auth, &name).await?;
    if change.password.is_some() && name == caller.name {
        return Err(HttpError::Forbidden(
            "change your own password at PUT /api/me/password, with the current one".to_owned(),
        ));
    }
    // The role first: if it is refused, nothing has changed.
    if let Some(role) = change.role {
        auth.set_role(&name, role).await?;
        audit
            .record(
                &caller.name,
                action::ACCOUNT_ROLE,
                Some(&name),
                Some(role.label().to_owned()),
                ip,
            )
            .await;
    }
    if let Some(password) = &change.password {
        // An admin's reset is what follows a compromise, so the account's
        // tokens end with its sessions.
        auth.set_password(&name, password, true).await?;
        audit
            .record(&caller.name, action::PASSWORD_CHANGE, Some(&name), None, ip)
            .await;
    }
    Ok(Json(account(&auth, &name).await?))
}

/// `DELETE /api/users/{name}`: removes an account with its sessions and
/// tokens.
#[utoipa::path(delete, path = "/api/users/{name}", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("admin"))),
    params(("name" = String, Path, description = "Account name")),
    responses((status = 204, description = "Removed with its sessions and tokens"),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The last admin cannot be removed", body = ErrorBody), Refused))]
pub async fn remove_user(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(name): Path<String>,
) -> Result<StatusCode, HttpError> {
    auth.remove_account(&name).await?;
    audit
        .record(&caller.name, action::ACCOUNT_REMOVE, Some(&name), None, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /api/audit`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// How many events (100 when absent, at most 1,000).
    limit: Option<u64>,
    /// Only events older than this event id, to page back.
    before: Option<i64>,
}

/// `GET /api/audit?limit=N&before=ID`: the newest events first.
#[utoipa::path(get, path = "/api/audit", tag = "accounts", security(("session" = []), ("token" = [])), extensions(("x-required-role" = json!("admin"))),
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>),
        (status = 400, description = "Invalid query", body = ErrorBody), Refused))]
pub async fn audit_log(
    State(auth): State<Arc<Auth>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(auth.store().audit(limit, query.before).await?))
}
