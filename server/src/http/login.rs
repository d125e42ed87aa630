//! Signing in and out with plain HTML forms, so both work without
//! JavaScript: the sign-in page is a Leptos page whose form posts here, and
//! every outcome is a redirect (post/redirect/get).

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;

use super::guard::{encode_component, ClientIp, Https};
use crate::audit::{action, Audit};
use crate::auth::{Auth, AuthError, Caller, MAX_SESSION_MS, SESSION_COOKIE};

/// The sign-in form.
#[derive(Debug, serde::Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: only a path on this server, so the
/// parameter cannot send anyone elsewhere.
fn safe_next(next: &str) -> &str {
    // Browsers drop tabs and newlines inside URLs, so `/\t/evil` would
    // become `//evil`: only visible ASCII is accepted, and never a second
    // slash or backslash right after the first.
    let local = next.starts_with('/')
        && next
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\')
        && !matches!(next.as_bytes().get(1), Some(b'/'))
        && !next.starts_with("/login");
    if local {
        next
    } else {
        "/"
    }
}

fn session_cookie(value: &str, max_age_s: i64, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// `POST /login`: opens a session and redirects to `next`, or back to the
/// sign-in page with the reason.
pub async fn login(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    https: Option<Extension<Https>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).to_owned();
    // The name goes back into the form, so a mistyped password costs only
    // the password. It is capped, as the form's own field is.
    let name: String = form.name.trim().chars().take(64).collect();
    let back = |error: &str| {
        Redirect::to(&format!(
            "/login?error={error}&name={}&next={}",
            encode_component(&name),
            encode_component(&next)
        ))
        .into_response()
    };
    match auth.login(form.name.trim(), &form.password, ip).await {
        Ok((secret, caller)) => {
            audit
                .record(&caller.name, action::LOGIN, None, None, ip)
                .await;
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session_cookie(&secret, MAX_SESSION_MS / 1000, https.is_some()),
            );
            response
        }
        Err(AuthError::WrongCredentials) => {
            audit
                .record(form.name.trim(), action::LOGIN_FAILED, None, None, ip)
                .await;
            back("invalid")
        }
        Err(AuthError::Throttled(wait)) => {
            tracing::warn!(account = ?crate::audit::plain(form.name.trim(), 64), ip = ?ip, wait, "sign-in throttled");
            back("throttled")
        }
        Err(e) => {
            tracing::error!("sign-in failed: {e}");
            back("unavailable")
        }
    }
}

/// `POST /logout`: ends the session and clears the cookie.
pub async fn logout(
    State(auth): State<Arc<Auth>>,
    State(audit): State<Audit>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    https: Option<Extension<Https>>,
) -> Response {
    if let Err(e) = auth.logout(&caller).await {
        tracing::error!("sign-out failed: {e}");
    }
    audit
        .record(&caller.name, action::LOGOUT, None, None, ip)
        .await;
    let mut response = Redirect::to("/login?bye=1").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0, https.is_some()));
    response
}

#[cfg(test)]
mod tests {
    use super::{safe_next, session_cookie};

    #[test]
    fn the_cookie_is_secure_under_https_only() {
        let plain = session_cookie("abc", 60, false);
        let secure = session_cookie("abc", 60, true);
        let text = |v: &axum::http::HeaderValue| v.to_str().expect("ascii").to_owned();
        assert_eq!(
            text(&plain),
            "sightline_session=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        assert_eq!(text(&secure), format!("{}; Secure", text(&plain)));
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next("/devices/a?range=1h"), "/devices/a?range=1h");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example"), "/");
        assert_eq!(safe_next(""), "/");
        assert_eq!(safe_next("/login?next=/x"), "/");
        assert_eq!(safe_next("/\t/evil.example"), "/");
        assert_eq!(safe_next("/\n/evil.example"), "/");
        assert_eq!(safe_next("/ /evil.example"), "/");
        assert_eq!(safe_next("/devices/a b"), "/");
    }
}
