//! The gate in front of every route: it finds who is asking (session cookie
//! or API token), refuses cross-origin state changes, applies the route's
//! access rule, and puts security headers on every response.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use leptos::nonce::Nonce;

use super::routes::{Access, Kind, Rule, Rules};
use crate::auth::{Auth, Caller, Via, SESSION_COOKIE};
use crate::metrics::Metrics;

/// What the gate needs.
#[derive(Clone, Debug)]
pub struct Gate {
    pub auth: Arc<Auth>,
    pub rules: Arc<Rules>,
    pub metrics: Arc<Metrics>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// Marks requests that arrived over HTTPS, so that cookies get `Secure`
/// and responses HSTS.
#[derive(Clone, Copy, Debug)]
pub struct Https;

/// The client's address: the socket's peer, or, when that peer is a
/// trusted proxy, the address that proxy saw (see [`client_ip`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

/// The peer address of an HTTPS connection (axum knows how to get it only
/// from its own listeners).
#[derive(Clone, Copy, Debug)]
pub struct TlsPeer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::edge::tls::TlsListener>,
    > for TlsPeer
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, crate::edge::tls::TlsListener>,
    ) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The address the request came from. When the socket's peer is a trusted
/// proxy, `X-Forwarded-For` is read from the right: each proxy appends the
/// address it saw, so the nearest entry that is not itself a trusted proxy
/// is the client. Entries further left were written by the client, which
/// can write anything, so they are never believed; neither is an entry
/// that does not parse, which leaves the last trusted hop as the address.
fn client_ip(request: &Request, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = peer_ip(request)?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(client)
}

/// The address of the socket's peer, plain or TLS.
fn peer_ip(request: &Request) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            extensions
                .get::<ConnectInfo<TlsPeer>>()
                .map(|c| c.0 .0.ip())
        })
}

/// Whether a trusted proxy says the browser reached it over HTTPS (it
/// terminated TLS). Every `X-Forwarded-Proto` entry must say `https`: a
/// client can write its own entry before a proxy that appends, and then
/// the proxy's own `http` keeps the request plain.
fn forwarded_https(request: &Request, trusted: &[ipnet::IpNet]) -> bool {
    if !peer_ip(request).is_some_and(|peer| trusted.iter().any(|net| net.contains(&peer))) {
        return false;
    }
    let mut protos = request
        .headers()
        .get_all("x-forwarded-proto")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .peekable();
    protos.peek().is_some() && protos.all(|p| p.eq_ignore_ascii_case("https"))
}

/// The value of one cookie.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The credentials of an `Authorization` header in `scheme` (`Bearer`,
/// `Basic`), as sent, without the scheme.
pub(super) fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, credentials) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then_some(credentials.trim())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    authorization(headers, "bearer")
}

/// The `host[:port]` of an origin or URL such as `https://a.example:3000/x`.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

/// Whether the request comes from a page of this server. Browsers send
/// `Origin` with every cross-origin request and with same-origin POSTs;
/// `Referer` (kept same-origin by our Referrer-Policy) is the fallback.
/// `Sec-Fetch-Site`, when present, must not say cross-site.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return false;
    }
    let Some(host) = text(header::HOST) else {
        return false;
    };
    match text(header::ORIGIN).or_else(|| text(header::REFERER)) {
        Some("null") | None => false,
        Some(source) => authority(source).is_some_and(|a| a.eq_ignore_ascii_case(host)),
    }
}

fn json_refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Percent-encodes a path and query for the `next` parameter.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The middleware: applies the matched route's rule.
pub async fn gate(
    State(gate): State<Gate>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    // Behind a proxy that terminated TLS, the request counts as HTTPS for
    // the handlers (Secure cookies) and, marked on the response, for
    // `security_headers` (HSTS), which runs outside this gate.
    let forwarded = forwarded_https(&request, &gate.trusted_proxies);
    if forwarded {
        request.extensions_mut().insert(Https);
    }
    let mut response = admit(gate, matched, request, next).await;
    if forwarded {
        response.extensions_mut().insert(Https);
    }
    response
}

/// The gate's work: identify, check origin and role, then run the route.
async fn admit(
    gate: Gate,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    // The static bundle is a nested service, which axum routes without a
    // matched path; it is public, since the sign-in page needs its styles.
    let path = request.uri().path();
    let asset = matched.is_none()
        && (path.starts_with(super::ASSETS_PREFIX)
            || path == super::ASSETS_PREFIX.trim_end_matches('/'));
    let rule = match matched.as_ref().map(MatchedPath::as_str) {
        _ if asset => Some(Rule {
            method: Method::GET,
            path: super::ASSETS_PREFIX.to_owned(),
            access: Access::Public,
            kind: Kind::Asset,
        }),
        Some(path) => gate.rules.find(request.method(), path).cloned(),
        None => None,
    };
    let Some(rule) = rule else {
        // A method the route does not serve: the router answers 405 with
        // `Allow`, and no handler runs.
        if matched
            .as_ref()
            .is_some_and(|m| gate.rules.knows_path(m.as_str()))
        {
            return next.run(request).await;
        }
        // A route without a rule is a bug; refusing it keeps the bug from
        // becoming a hole.
        tracing::error!(method = %request.method(), path = ?matched.as_ref().map(MatchedPath::as_str), "route has no access rule");
        return json_refusal(StatusCode::FORBIDDEN, "this route has no access rule");
    };
    let ip = client_ip(&request, &gate.trusted_proxies);

    if rule.access == Access::Device {
        // A device proves itself to the handler with its own secret. A
        // browser could still be made to send one it remembers (HTTP
        // Basic) from another site's page, so a request that a browser
        // marks as coming from elsewhere is refused; devices send no
        // `Origin`. MQTT over WebSocket is the exception: its login
        // travels inside the stream, where no browser adds anything of its
        // own, so pages anywhere may open it.
        let from_browser = request.headers().contains_key(header::ORIGIN)
            || request.headers().contains_key("sec-fetch-site");
        let opens_socket = rule.kind == Kind::Socket;
        if from_browser && !opens_socket && !same_origin(request.headers()) {
            Metrics::add(&gate.metrics.auth.csrf_refused, 1);
            return json_refusal(StatusCode::FORBIDDEN, "cross-origin request refused");
        }
        request.extensions_mut().insert(ClientIp(ip));
        return next.run(request).await;
    }

    let headers = request.headers();
    let (caller, bad_token) = match bearer(headers) {
        Some(token) => match gate.auth.token(token).await {
            Ok(Some(c)) => (Some(c), false),
            Ok(None) => (None, true),
            Err(e) => {
                tracing::error!("cannot check an API token: {e}");
                return json_refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable",
                );
            }
        },
        None => match cookie(headers, SESSION_COOKIE) {
            Some(secret) => match gate.auth.session(secret).await {
                Ok(c) => (c, false),
                Err(e) => {
                    tracing::error!("cannot check a session: {e}");
                    return json_refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the database is unavailable",
                    );
                }
            },
            None => (None, false),
        },
    };

    // Browsers attach cookies to cross-site requests; tokens they never
    // attach. So every state change not made with a token, and every live
    // socket opened with a cookie, must come from our own pages.
    let by_token = caller
        .as_ref()
        .is_some_and(|c| matches!(c.via, Via::Token(_)));
    let changes_state = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let checked_origin = (changes_state && !by_token)
        || (rule.kind == Kind::Socket
            && caller.is_some()
            && !by_token
            && headers.contains_key(header::ORIGIN));
    if checked_origin && !same_origin(headers) {
        Metrics::add(&gate.metrics.auth.csrf_refused, 1);
        tracing::warn!(method = %request.method(), path = %rule.path, ip = ?ip, "cross-origin request refused");
        return json_refusal(StatusCode::FORBIDDEN, "cross-origin request refused");
    }

    if let Access::Least(role) = rule.access {
        match &caller {
            None => {
                Metrics::add(&gate.metrics.auth.unauthenticated, 1);
                return unauthenticated(&rule, &request, bad_token);
            }
            Some(c) if c.role < role => {
                Metrics::add(&gate.metrics.auth.forbidden, 1);
                return forbidden(&rule, c, role);
            }
            Some(_) => {}
        }
    }
    request.extensions_mut().insert(ClientIp(ip));
    let signed_in = caller.is_some();
    if let Some(c) = caller {
        request.extensions_mut().insert(c.me());
        request.extensions_mut().insert(c);
    }
    let mut response = next.run(request).await;
    // What a signed-in account sees must not linger in shared caches or
    // the browser's back-forward history after sign-out.
    if signed_in && !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn unauthenticated(rule: &Rule, request: &Request, bad_token: bool) -> Response {
    if rule.kind == Kind::Page {
        let wanted = request.uri().path_and_query().map_or("/", |p| p.as_str());
        return Redirect::to(&format!("/login?next={}", encode_component(wanted))).into_response();
    }
    let message = if bad_token {
        "the API token is not valid (revoked or mistyped)"
    } else {
        "sign in, or send an API token as Authorization: Bearer"
    };
    let mut response = json_refusal(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sightline\""),
    );
    response
}

fn forbidden(rule: &Rule, caller: &Caller, needed: app::model::Role) -> Response {
    let message = format!(
        "{} is a {}; this needs the {} role",
        caller.name,
        caller.role.label(),
        needed.label()
    );
    if rule.kind == Kind::Page {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            forbidden_page(&message),
        )
            .into_response();
    }
    json_refusal(StatusCode::FORBIDDEN, &message)
}

/// A refused page as a page of the app: its top bar, why, and the ways
/// back (the fleet, or signing in as someone else). Static, since the
/// refusal comes before any page is rendered.
fn forbidden_page(message: &str) -> String {
    let message = app::format::escape_html(message);
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Not allowed · Sightline</title>\
         <link rel=\"stylesheet\" href=\"/pkg/main.css\"></head><body>\
         <header class=\"topbar\"><a class=\"brand\" href=\"/\">Sightline</a>\
         <span class=\"tagline\">live sensor fleet</span></header>\
         <main id=\"content\"><section class=\"panel login\" data-testid=\"forbidden\">\
         <h1>Not allowed</h1><p>{message}.</p>\
         <p><a href=\"/\">Back to the fleet</a></p>\
         <form method=\"post\" action=\"/logout\"><button type=\"submit\" class=\"link\">\
         Sign in as someone else</button></form></section></main></body></html>"
    )
}

/// The Content-Security-Policy of every response. Scripts come only from
/// this server, and the one inline script Leptos needs to start hydration
/// (plus its serialized data) carries the request's nonce. Styles allow
/// inline attributes, which ECharts and the chart layout set.
fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The middleware that sets security headers, and the nonce pages use. It
/// runs before routing, so it also sends paths with a trailing slash to
/// the path without: Leptos would render `/admin/` through the fallback,
/// which no route rule covers.
pub async fn security_headers(mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.starts_with(super::ASSETS_PREFIX) {
        let trimmed = path.trim_end_matches('/');
        let target = match request.uri().query() {
            Some(q) => format!("{}?{q}", if trimmed.is_empty() { "/" } else { trimmed }),
            None => {
                if trimmed.is_empty() {
                    "/".to_owned()
                } else {
                    trimmed.to_owned()
                }
            }
        };
        // `//evil` would leave the site; the trim above never yields it
        // except from such a path, which is sent home instead.
        let target = if target.starts_with("//") {
            "/".to_owned()
        } else {
            target
        };
        return Redirect::permanent(&target).into_response();
    }
    let nonce = Nonce::new();
    request.extensions_mut().insert(nonce.clone());
    let https = request.extensions().get::<Https>().is_some();
    let mut response = next.run(request).await;
    let https = https || response.extensions().get::<Https>().is_some();
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&nonce)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Leptos context for a page render: the request's nonce, so that the
/// inline scripts carry the one in the header, and the signed-in account.
pub fn provide_request_context() {
    use leptos::prelude::{provide_context, use_context};
    if let Some(parts) = use_context::<axum::http::request::Parts>() {
        if let Some(nonce) = parts.extensions.get::<Nonce>().cloned() {
            provide_context(nonce);
        }
        if let Some(me) = parts.extensions.get::<app::model::Me>().cloned() {
            provide_context(me);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origin_must_match_host() {
        assert!(same_origin(&headers(&[
            ("host", "a:3000"),
            ("origin", "http://a:3000")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "a:3000"),
            ("origin", "http://evil:3000")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "a:3000"),
            ("origin", "http://a:3001")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "a:3000"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[("host", "a:3000")])));
        assert!(same_origin(&headers(&[
            ("host", "a:3000"),
            ("referer", "http://a:3000/devices/x?y=1")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "a:3000"),
            ("origin", "http://a:3000"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = headers(&[("cookie", "a=1; sightline_session=abc; b=2")]);
        assert_eq!(cookie(&h, "sightline_session"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
