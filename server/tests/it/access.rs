//! Who may use which route. The table below lists every route the router
//! serves with the status an anonymous visitor, a viewer, an operator and
//! an admin get; the test walks it against a real server with real
//! sessions, and fails if the router has a route the table lacks (or the
//! other way round). Further tests cover cross-origin requests, session
//! revocation and expiry, sign-in throttling and API tokens.

use crate::common;

use std::collections::BTreeSet;

use common::{test_config, wait_for, TestDb, TestServer};
use reqwest::header::{HeaderMap, HeaderValue, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::Value;
use server::config::Config;

/// A device that exists, for routes that take one.
const DEVICE: &str = "Known01";
const PASSWORD: &str = "a long enough password";

/// `(method, route, request path, form body, [anonymous, viewer, operator, admin])`.
/// A form body is sent as `application/x-www-form-urlencoded`; JSON routes
/// get no body, so where the gate lets a request through, the handler's own
/// answer to an empty body (400) shows that it ran.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    [u16; 4],
);

const ROUTES: &[Row] = &[
    // MQTT over WebSocket: the device logs in inside the stream, so the
    // upgrade itself is open to anyone; a plain GET is not an upgrade.
    ("GET", "/mqtt", "/mqtt", None, [400, 400, 400, 400]),
    // HTTP ingest answers to a device's secret only: no session or token
    // of any role gets in.
    (
        "POST",
        "/api/devices/{id}/readings",
        "/api/devices/Known01/readings",
        None,
        [401, 401, 401, 401],
    ),
    (
        "POST",
        "/api/v1/{token}/telemetry",
        "/api/v1/not-a-token/telemetry",
        None,
        [401, 401, 401, 401],
    ),
    (
        "GET",
        "/api/health",
        "/api/health",
        None,
        [200, 200, 200, 200],
    ),
    (
        "GET",
        "/api/stats",
        "/api/stats",
        None,
        [401, 200, 200, 200],
    ),
    ("GET", "/metrics", "/metrics", None, [401, 200, 200, 200]),
    (
        "GET",
        "/api/devices",
        "/api/devices",
        None,
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/api/devices",
        "/api/devices",
        None,
        [401, 403, 400, 400],
    ),
    (
        "GET",
        "/api/devices/{id}",
        "/api/devices/Known01",
        None,
        [401, 200, 200, 200],
    ),
    (
        "DELETE",
        "/api/devices/{id}",
        "/api/devices/Unknown99",
        None,
        [401, 403, 404, 404],
    ),
    (
        "POST",
        "/api/devices/{id}/secret",
        "/api/devices/Unknown99/secret",
        None,
        [401, 403, 404, 404],
    ),
    (
        "PUT",
        "/api/devices/{id}/enabled",
        "/api/devices/Known01/enabled",
        None,
        [401, 403, 400, 400],
    ),
    (
        "PUT",
        "/api/devices/{id}/label",
        "/api/devices/Known01/label",
        None,
        [401, 403, 400, 400],
    ),
    (
        "GET",
        "/api/service-accounts",
        "/api/service-accounts",
        None,
        [401, 403, 403, 200],
    ),
    (
        "POST",
        "/api/service-accounts",
        "/api/service-accounts",
        None,
        [401, 403, 403, 400],
    ),
    (
        "DELETE",
        "/api/service-accounts/{name}",
        "/api/service-accounts/Nobody9",
        None,
        [401, 403, 403, 404],
    ),
    (
        "GET",
        "/api/devices/{id}/desired",
        "/api/devices/Known01/desired",
        None,
        [401, 404, 404, 404],
    ),
    (
        "PUT",
        "/api/devices/{id}/desired",
        "/api/devices/Known01/desired",
        None,
        [401, 403, 400, 400],
    ),
    (
        "DELETE",
        "/api/devices/{id}/desired",
        "/api/devices/Unknown99/desired",
        None,
        [401, 403, 404, 404],
    ),
    (
        "GET",
        "/api/devices/{id}/export",
        "/api/devices/Known01/export",
        None,
        [401, 200, 200, 200],
    ),
    (
        "GET",
        "/api/devices/{id}/series",
        "/api/devices/Known01/series",
        None,
        [401, 200, 200, 200],
    ),
    (
        "GET",
        "/api/devices/{id}/commands",
        "/api/devices/Known01/commands",
        None,
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/api/devices/{id}/commands",
        "/api/devices/Known01/commands",
        None,
        [401, 403, 400, 400],
    ),
    (
        "GET",
        "/api/commands/{id}",
        "/api/commands/nope",
        None,
        [401, 404, 404, 404],
    ),
    ("GET", "/api/me", "/api/me", None, [401, 200, 200, 200]),
    (
        "PUT",
        "/api/me/password",
        "/api/me/password",
        None,
        [401, 400, 400, 400],
    ),
    (
        "GET",
        "/api/tokens",
        "/api/tokens",
        None,
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/api/tokens",
        "/api/tokens",
        None,
        [401, 400, 400, 400],
    ),
    (
        "DELETE",
        "/api/tokens/{id}",
        "/api/tokens/nope",
        None,
        [401, 404, 404, 404],
    ),
    (
        "GET",
        "/api/users",
        "/api/users",
        None,
        [401, 403, 403, 200],
    ),
    (
        "POST",
        "/api/users",
        "/api/users",
        None,
        [401, 403, 403, 400],
    ),
    (
        "PATCH",
        "/api/users/{name}",
        "/api/users/nobody",
        None,
        [401, 403, 403, 400],
    ),
    (
        "DELETE",
        "/api/users/{name}",
        "/api/users/nobody",
        None,
        [401, 403, 403, 404],
    ),
    (
        "GET",
        "/api/audit",
        "/api/audit",
        None,
        [401, 403, 403, 200],
    ),
    (
        "GET",
        "/api/openapi.json",
        "/api/openapi.json",
        None,
        [200, 200, 200, 200],
    ),
    ("GET", "/api/docs", "/api/docs", None, [200, 200, 200, 200]),
    (
        "POST",
        "/login",
        "/login",
        Some("name=nobody&password=wrong-password"),
        [303, 303, 303, 303],
    ),
    // Pages: a visitor is sent to the sign-in page.
    ("GET", "/", "/", None, [303, 200, 200, 200]),
    (
        "GET",
        "/devices/{id}",
        "/devices/Known01",
        None,
        [303, 200, 200, 200],
    ),
    ("GET", "/login", "/login", None, [200, 200, 200, 200]),
    ("GET", "/admin", "/admin", None, [303, 403, 403, 200]),
    ("GET", "/account", "/account", None, [303, 200, 200, 200]),
    // The live socket: past the gate, a plain GET is no WebSocket upgrade.
    ("GET", "/ws", "/ws", None, [401, 400, 400, 400]),
    ("GET", "/pkg/", "/pkg/main.css", None, [200, 200, 200, 200]),
    // Server functions behind the pages.
    (
        "POST",
        "/_app/fleet",
        "/_app/fleet",
        Some(""),
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/_app/device",
        "/_app/device",
        Some("id=Known01"),
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/_app/history",
        "/_app/history",
        Some("id=Known01&window[Last][span]=60000&points=10&tz=UTC"),
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/_app/commands",
        "/_app/commands",
        Some("id=Known01"),
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/_app/service_accounts",
        "/_app/service_accounts",
        Some(""),
        [401, 403, 403, 200],
    ),
    (
        "POST",
        "/_app/add_service_account",
        "/_app/add_service_account",
        Some("name=bad%20name&grants=sensor%2F%23"),
        [401, 403, 403, 400],
    ),
    (
        "POST",
        "/_app/remove_service_account",
        "/_app/remove_service_account",
        Some("name=Nobody9"),
        [401, 403, 403, 400],
    ),
    (
        "POST",
        "/_app/desired",
        "/_app/desired",
        Some("id=Known01"),
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/_app/set_desired",
        "/_app/set_desired",
        Some("id=Unknown99&json=%7B%7D"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/tokens",
        "/_app/tokens",
        Some(""),
        [401, 200, 200, 200],
    ),
    (
        "POST",
        "/_app/add_token",
        "/_app/add_token",
        Some("label=%20"),
        [401, 400, 400, 400],
    ),
    (
        "POST",
        "/_app/revoke_token",
        "/_app/revoke_token",
        Some("id=nope"),
        [401, 400, 400, 400],
    ),
    (
        "POST",
        "/_app/add_device",
        "/_app/add_device",
        Some("id=bad%20id"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/set_enabled",
        "/_app/set_enabled",
        Some("id=Unknown99&enabled=false"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/set_label",
        "/_app/set_label",
        Some("id=Known01&label=bad%07label"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/rotate_secret",
        "/_app/rotate_secret",
        Some("id=Unknown99"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/delete_device",
        "/_app/delete_device",
        Some("id=Known01&confirm=nope&keep_data=true"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/send_command",
        "/_app/send_command",
        Some("id=nope&name=ping&params=&two_way=true&persistent=false"),
        [401, 403, 400, 400],
    ),
    (
        "POST",
        "/_app/accounts",
        "/_app/accounts",
        Some(""),
        [401, 403, 403, 200],
    ),
    (
        "POST",
        "/_app/audit",
        "/_app/audit",
        Some(""),
        [401, 403, 403, 200],
    ),
    (
        "POST",
        "/_app/add_account",
        "/_app/add_account",
        Some("name=bad%20name&password=long%20enough%20pw&role=viewer"),
        [401, 403, 403, 400],
    ),
    (
        "POST",
        "/_app/set_role",
        "/_app/set_role",
        Some("name=nobody&role=viewer"),
        [401, 403, 403, 400],
    ),
    (
        "POST",
        "/_app/remove_account",
        "/_app/remove_account",
        Some("name=nobody"),
        [401, 403, 403, 400],
    ),
    // Last, since it ends the session it is walked with.
    ("POST", "/logout", "/logout", None, [401, 303, 303, 303]),
];

const ROLES: [&str; 4] = ["anonymous", "viewer", "operator", "admin"];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// Signs in through the form and returns the session cookie's value.
async fn sign_in(server: &TestServer, name: &str, password: &str) -> Result<String, String> {
    sign_in_forwarded(server, None, name, password).await
}

/// Signs in as [`sign_in`] does, with `forwarded` as `X-Forwarded-For`, as
/// a reverse proxy (or a client pretending) would send it.
async fn sign_in_forwarded(
    server: &TestServer,
    forwarded: Option<&str>,
    name: &str,
    password: &str,
) -> Result<String, String> {
    let mut request = client()
        .post(server.url("/login"))
        .header(ORIGIN, server.url(""))
        .form(&[("name", name), ("password", password), ("next", "/")]);
    if let Some(hops) = forwarded {
        request = request.header("x-forwarded-for", hops);
    }
    let response = request.send().await.expect("sign in");
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .and_then(|c| c.strip_prefix("sightline_session="))
        .map(str::to_owned);
    match cookie {
        Some(c) if location == "/" => Ok(c),
        _ => Err(location),
    }
}

/// Headers of a browser on one of the server's own pages, signed in with
/// `session` (or not).
fn browser(server: &TestServer, session: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ORIGIN,
        HeaderValue::from_str(&server.url("")).expect("origin"),
    );
    if let Some(s) = session {
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("sightline_session={s}")).expect("cookie"),
        );
    }
    h
}

/// Creates an account as an admin at the dashboard would: creating
/// accounts needs a dashboard session, not the API token `server.client()`
/// carries.
async fn add_account(server: &TestServer, name: &str, role: &str) {
    let admin = sign_in(server, "admin", common::ADMIN_PASSWORD)
        .await
        .expect("the admin signs in");
    let response = client()
        .post(server.url("/api/users"))
        .headers(browser(server, Some(&admin)))
        .json(&serde_json::json!({"name": name, "password": PASSWORD, "role": role}))
        .send()
        .await
        .expect("add account");
    assert_eq!(response.status(), 201, "create {name}");
}

/// Changes an account as an admin at the dashboard would (changing
/// accounts needs a dashboard session) and returns the status.
async fn admin_patch(server: &TestServer, name: &str, change: Value) -> reqwest::StatusCode {
    let admin = sign_in(server, "admin", common::ADMIN_PASSWORD)
        .await
        .expect("the admin signs in");
    client()
        .patch(server.url(&format!("/api/users/{name}")))
        .headers(browser(server, Some(&admin)))
        .json(&change)
        .send()
        .await
        .expect("patch")
        .status()
}

async fn start(db: TestDb) -> (TestDb, TestServer) {
    start_with(db, |_| {}).await
}

/// Starts a server on `db` with the configuration changed by `tune`, and
/// the accounts and device every test here uses.
async fn start_with(db: TestDb, tune: impl FnOnce(&mut Config)) -> (TestDb, TestServer) {
    let mut config = test_config(&db.url);
    tune(&mut config);
    let server = TestServer::start(config).await;
    for role in ["viewer", "operator"] {
        add_account(&server, role, role).await;
    }
    add_account(&server, "boss", "admin").await;
    server.add_device(DEVICE).await;
    (db, server)
}

async fn every_route_answers_each_role_as_the_table_says(db: TestDb) {
    let (_db, server) = start(db).await;

    // The table must name exactly the routes the router serves.
    let served: BTreeSet<(String, String)> = server::http::route_rules()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, ..)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes without an entry in ROUTES: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "ROUTES entries the router does not serve: {stale:?}"
    );

    let mut failures = Vec::new();
    for (who, role) in ROLES.iter().enumerate() {
        let session = match *role {
            "anonymous" => None,
            "admin" => Some(
                sign_in(&server, "boss", PASSWORD)
                    .await
                    .expect("admin signs in"),
            ),
            name => Some(sign_in(&server, name, PASSWORD).await.expect("signs in")),
        };
        for (method, route, path, form, expected) in ROUTES {
            let mut request = client()
                .request(method.parse().expect("method"), server.url(path))
                .headers(browser(&server, session.as_deref()));
            if let Some(form) = form {
                request = request
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(*form);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            if status != expected[who] {
                let body = response.text().await.unwrap_or_default();
                failures.push(format!(
                    "{role} {method} {route} ({path}): got {status}, expected {}: {}",
                    expected[who],
                    body.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn parallel_wrong_passwords_cannot_outrun_the_limit(db: TestDb) {
    let (_db, server) = start(db).await;
    let attempts = (0..30).map(|_| sign_in(&server, "operator", "not the password"));
    let outcomes = futures_util::future::join_all(attempts).await;
    let checked = outcomes
        .iter()
        .filter(|o| {
            o.as_ref()
                .err()
                .is_some_and(|l| l.contains("error=invalid"))
        })
        .count();
    assert_eq!(checked, 5, "{outcomes:?}");
}

async fn trailing_slashes_do_not_reach_unguarded_pages(db: TestDb) {
    let (_db, server) = start(db).await;
    let response = client()
        .get(server.url("/admin/?x=1"))
        .send()
        .await
        .expect("page");
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers().get(LOCATION).expect("location"),
        "/admin?x=1"
    );
    let response = client()
        .get(server.url("/admin"))
        .send()
        .await
        .expect("page");
    assert_eq!(response.status(), 303);
}

async fn methods_a_route_does_not_serve_get_405_without_reaching_a_handler(db: TestDb) {
    let (_db, server) = start(db).await;
    for (method, path) in [
        ("PUT", "/api/devices/Known01/commands"),
        ("DELETE", "/api/devices"),
        ("PATCH", "/api/me"),
    ] {
        let response = client()
            .request(method.parse().expect("method"), server.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method} {path}");
        assert!(response.headers().contains_key("allow"), "{method} {path}");
    }
}

async fn refusals_say_where_to_go(db: TestDb) {
    let (_db, server) = start(db).await;
    let page = client()
        .get(server.url("/devices/Known01?range=1h"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 303);
    assert_eq!(
        page.headers().get(LOCATION).expect("location"),
        "/login?next=/devices/Known01%3Frange%3D1h"
    );
    let api = client()
        .get(server.url("/api/devices"))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 401);
    assert!(api.headers().contains_key("www-authenticate"));
    let body: Value = api.json().await.expect("json");
    assert!(body["error"].as_str().expect("error").contains("sign in"));
}

async fn cross_origin_state_changes_are_refused(db: TestDb) {
    let (_db, server) = start(db).await;
    let session = sign_in(&server, "operator", PASSWORD)
        .await
        .expect("signs in");
    let cookie = format!("sightline_session={session}");
    let post = |origin: Option<&str>, id: &str| {
        let mut r = client()
            .post(server.url("/api/devices"))
            .header(COOKIE, &cookie)
            .json(&serde_json::json!({ "id": id }));
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        r.send()
    };
    // Another site's page, a missing Origin, and a sibling port are all
    // other origins; the device is never created.
    for (origin, id) in [
        (Some("http://evil.example"), "Csrf1"),
        (None, "Csrf2"),
        (Some("http://127.0.0.1:1"), "Csrf3"),
    ] {
        let response = post(origin, id).await.expect("request");
        assert_eq!(response.status(), 403, "origin {origin:?}");
        assert_eq!(
            server
                .get(&format!("/api/devices/{id}"))
                .await
                .expect("get")
                .0,
            404
        );
    }
    // A form posted from another site, carrying the cookie, is refused too.
    let form = client()
        .post(server.url("/logout"))
        .header(COOKIE, &cookie)
        .header(ORIGIN, "http://evil.example")
        .send()
        .await
        .expect("logout");
    assert_eq!(form.status(), 403);
    // The session was not ended by the forged sign-out.
    let me = client()
        .get(server.url("/api/me"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);
    // From our own page it works.
    let own = post(Some(&server.url("")), "Csrf4").await.expect("request");
    assert_eq!(own.status(), 201);
    // A live socket opened with the cookie from another site is refused.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut ws = format!("ws://{}/ws", server.http)
        .into_client_request()
        .expect("request");
    ws.headers_mut()
        .insert("cookie", cookie.parse().expect("cookie"));
    ws.headers_mut()
        .insert("origin", "http://evil.example".parse().expect("origin"));
    assert!(tokio_tungstenite::connect_async(ws).await.is_err());
    assert_eq!(
        server::metrics::read_value(&server.metrics().await, "sightline_http_csrf_refused_total"),
        Some(5)
    );
}

async fn sign_out_password_change_and_idleness_end_sessions(db: TestDb) {
    let (_db, server) = start(db).await;
    let me = |session: String| {
        let server_url = server.url("/api/me");
        async move {
            client()
                .get(server_url)
                .header(COOKIE, format!("sightline_session={session}"))
                .send()
                .await
                .expect("me")
                .status()
                .as_u16()
        }
    };
    // Sign-out ends that session only.
    let a = sign_in(&server, "viewer", PASSWORD).await.expect("a");
    let b = sign_in(&server, "viewer", PASSWORD).await.expect("b");
    assert_eq!(me(a.clone()).await, 200);
    let out = client()
        .post(server.url("/logout"))
        .headers(browser(&server, Some(&a)))
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 303);
    assert!(out
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(me(a).await, 401);
    assert_eq!(me(b.clone()).await, 200);

    // Changing the password ends every session of the account.
    let c = sign_in(&server, "viewer", PASSWORD).await.expect("c");
    let change = client()
        .put(server.url("/api/me/password"))
        .headers(browser(&server, Some(&b)))
        .json(&serde_json::json!({"current": PASSWORD, "new": "another long password"}))
        .send()
        .await
        .expect("change");
    assert_eq!(change.status(), 204);
    assert_eq!(me(b).await, 401);
    assert_eq!(me(c).await, 401);
    assert!(sign_in(&server, "viewer", PASSWORD).await.is_err());
    let d = sign_in(&server, "viewer", "another long password")
        .await
        .expect("new password");

    // An admin resetting it (at the dashboard) does the same.
    let admin = sign_in(&server, "admin", common::ADMIN_PASSWORD)
        .await
        .expect("the admin signs in");
    let reset = client()
        .patch(server.url("/api/users/viewer"))
        .headers(browser(&server, Some(&admin)))
        .json(&serde_json::json!({"password": PASSWORD}))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status(), 200);
    assert_eq!(me(d).await, 401);

    // A session idle for longer than the limit ends on its next use.
    let e = sign_in(&server, "viewer", PASSWORD).await.expect("e");
    let store = server::store::Store::open(&server.database_url)
        .await
        .expect("store");
    let idle = i64::try_from(server::config::Config::default().session_idle_minutes)
        .expect("minutes")
        * 60_000;
    store
        .touch_session(
            &server::store::registry::hash_secret(&e),
            server::clock::now_ms() - idle - 1000,
        )
        .await
        .expect("age the session");
    assert_eq!(me(e).await, 401);
}

async fn failed_sign_ins_are_throttled_per_account_and_per_address(db: TestDb) {
    let (_db, server) = start(db).await;
    for _ in 0..5 {
        assert_eq!(
            sign_in(&server, "operator", "not the password").await,
            Err("/login?error=invalid&name=operator&next=/".to_owned())
        );
    }
    // Now even the right password is refused unchecked.
    assert_eq!(
        sign_in(&server, "operator", PASSWORD).await,
        Err("/login?error=throttled&name=operator&next=/".to_owned())
    );
    // Other accounts are unaffected...
    assert!(sign_in(&server, "viewer", PASSWORD).await.is_ok());
    // ...until this address has failed 20 times in all.
    for i in 0..15 {
        let _ = sign_in(&server, &format!("guess{i}"), "not the password").await;
    }
    assert_eq!(
        sign_in(&server, "viewer", PASSWORD).await,
        Err("/login?error=throttled&name=viewer&next=/".to_owned())
    );
    // With no trusted proxy configured, a client cannot step around the
    // limit by naming another address.
    assert_eq!(
        sign_in_forwarded(&server, Some("203.0.113.9"), "viewer", PASSWORD).await,
        Err("/login?error=throttled&name=viewer&next=/".to_owned())
    );
    let metrics = server.metrics().await;
    let read = |name| server::metrics::read_value(&metrics, name);
    assert_eq!(
        read("sightline_login_failures_total"),
        Some(20),
        "{metrics}"
    );
    assert_eq!(
        read("sightline_login_throttled_total"),
        Some(3),
        "{metrics}"
    );
    // Failures are in the audit log with the name tried.
    let audit: Vec<Value> = server.get_json("/api/audit?limit=100").await;
    assert!(audit.iter().any(|e| e["action"] == "login_failed"
        && e["actor"] == "operator"
        && e["ip"] == "127.0.0.1"));
}

async fn behind_a_trusted_proxy_each_browser_has_its_own_sign_in_limit(db: TestDb) {
    // nginx on this machine, as scripts/cluster.sh runs it.
    let (_db, server) = start_with(db, |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a network")];
    })
    .await;
    // One browser behind the proxy fails 20 times, over many accounts.
    for i in 0..20 {
        let _ = sign_in_forwarded(
            &server,
            Some("203.0.113.5"),
            &format!("guess{i}"),
            "not the password",
        )
        .await;
    }
    let throttled = Err("/login?error=throttled&name=viewer&next=/".to_owned());
    assert_eq!(
        sign_in_forwarded(&server, Some("203.0.113.5"), "viewer", PASSWORD).await,
        throttled
    );
    // Other browsers behind the same proxy are not locked out with it.
    assert!(
        sign_in_forwarded(&server, Some("203.0.113.6"), "viewer", PASSWORD)
            .await
            .is_ok()
    );
    // The blocked browser cannot escape by writing another address first:
    // the proxy appends the one it saw, and that is the one believed.
    assert_eq!(
        sign_in_forwarded(
            &server,
            Some("203.0.113.6, 203.0.113.5"),
            "viewer",
            PASSWORD
        )
        .await,
        throttled
    );
    // Hops that are trusted proxies themselves are skipped; an entry that is
    // not an address leaves the proxy's own address, which is not blocked.
    assert_eq!(
        sign_in_forwarded(&server, Some("203.0.113.5, 127.0.0.2"), "viewer", PASSWORD).await,
        throttled
    );
    assert!(sign_in_forwarded(
        &server,
        Some("203.0.113.5, not-an-address"),
        "viewer",
        PASSWORD
    )
    .await
    .is_ok());
    // The audit log names the browser, not the proxy.
    let audit: Vec<Value> = server.get_json("/api/audit?limit=100").await;
    assert!(audit
        .iter()
        .any(|e| e["action"] == "login_failed" && e["ip"] == "203.0.113.5"));
}

async fn behind_a_trusted_proxy_that_terminates_tls_cookies_are_secure_with_hsts(db: TestDb) {
    // nginx terminating TLS tells the instance so in X-Forwarded-Proto.
    let (_db, server) = start_with(db, |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a network")];
    })
    .await;
    let sign_in = |proto: Option<&'static str>| {
        let mut request = client()
            .post(server.url("/login"))
            .header(ORIGIN, server.url(""))
            .form(&[("name", "viewer"), ("password", PASSWORD), ("next", "/")]);
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        async move {
            let response = request.send().await.expect("sign in");
            let cookie = response
                .headers()
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(cookie.starts_with("sightline_session="), "{cookie}");
            let hsts = response.headers().contains_key("strict-transport-security");
            (cookie.ends_with("; Secure"), hsts)
        }
    };
    assert_eq!(sign_in(Some("https")).await, (true, true));
    assert_eq!(sign_in(Some("http")).await, (false, false));
    assert_eq!(sign_in(None).await, (false, false));
    // A client's own "https" before the proxy's appended "http" is not
    // believed.
    assert_eq!(sign_in(Some("https, http")).await, (false, false));

    // Without --trusted-proxy the header means nothing: anyone could send it.
    let (_db, open) = start_with(TestDb::sqlite(), |_| {}).await;
    let response = client()
        .post(open.url("/login"))
        .header(ORIGIN, open.url(""))
        .header("x-forwarded-proto", "https")
        .form(&[("name", "viewer"), ("password", PASSWORD), ("next", "/")])
        .send()
        .await
        .expect("sign in");
    let cookie = response.headers().get(SET_COOKIE).expect("a cookie");
    assert!(
        !cookie.to_str().expect("text").contains("Secure"),
        "{cookie:?}"
    );
    assert!(!response.headers().contains_key("strict-transport-security"));
}

async fn api_tokens_act_for_their_account_until_revoked(db: TestDb) {
    let (_db, server) = start(db).await;
    let session = sign_in(&server, "viewer", PASSWORD)
        .await
        .expect("signs in");
    let created: Value = client()
        .post(server.url("/api/tokens"))
        .headers(browser(&server, Some(&session)))
        .json(&serde_json::json!({"label": "grafana"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let token = created["token"].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let with_token = common::client_with(&token);

    // It reads as the viewer, from a script with no Origin at all...
    let me: Value = with_token
        .get(server.url("/api/me"))
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["name"], "viewer");
    // ...but cannot do what a viewer cannot.
    let refused = with_token
        .post(server.url(&format!("/api/devices/{DEVICE}/commands")))
        .json(&serde_json::json!({"name": "ping"}))
        .send()
        .await
        .expect("command");
    assert_eq!(refused.status(), 403);

    // A token cannot mint more tokens or change the password, so a leaked
    // one cannot make itself permanent.
    let mint = with_token
        .post(server.url("/api/tokens"))
        .json(&serde_json::json!({"label": "more"}))
        .send()
        .await
        .expect("mint");
    assert_eq!(mint.status(), 403);
    let mint_on_page = with_token
        .post(server.url("/_app/add_token"))
        .form(&[("label", "more")])
        .send()
        .await
        .expect("mint through the account page's function");
    assert_eq!(mint_on_page.status(), 403);
    let change = with_token
        .put(server.url("/api/me/password"))
        .json(&serde_json::json!({"current": PASSWORD, "new": "a new long password"}))
        .send()
        .await
        .expect("change");
    assert_eq!(change.status(), 403);

    // Listing shows the token without its secret.
    let list = with_token
        .get(server.url("/api/tokens"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(list.contains("grafana") && !list.contains(&token));

    // Revoked, it stops working at once.
    let revoke = with_token
        .delete(server.url(&format!("/api/tokens/{id}")))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), 204);
    let after = with_token
        .get(server.url("/api/me"))
        .send()
        .await
        .expect("me");
    assert_eq!(after.status(), 401);
    let body: Value = after.json().await.expect("json");
    assert!(body["error"].as_str().expect("error").contains("not valid"));
    // An admin's password reset (as after a compromise) ends the
    // account's tokens along with its sessions.
    let second: Value = client()
        .post(server.url("/api/tokens"))
        .headers(browser(&server, Some(&session)))
        .json(&serde_json::json!({"label": "second"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let second = common::client_with(second["token"].as_str().expect("token"));
    assert_eq!(
        second
            .get(server.url("/api/me"))
            .send()
            .await
            .expect("me")
            .status(),
        200
    );
    let reset = admin_patch(
        &server,
        "viewer",
        serde_json::json!({"password": "reset by the admin"}),
    )
    .await;
    assert_eq!(reset, 200);
    assert_eq!(
        second
            .get(server.url("/api/me"))
            .send()
            .await
            .expect("me")
            .status(),
        401
    );

    // A made-up token is refused the same way.
    let fake = common::client_with("sightline_0000")
        .get(server.url("/api/devices"))
        .send()
        .await
        .expect("fake");
    assert_eq!(fake.status(), 401);
}

async fn responses_carry_security_headers_and_the_page_nonce(db: TestDb) {
    let (_db, server) = start(db).await;
    let session = sign_in(&server, "viewer", PASSWORD)
        .await
        .expect("signs in");
    let page = client()
        .get(server.url("/"))
        .headers(browser(&server, Some(&session)))
        .send()
        .await
        .expect("page");
    let headers = page.headers().clone();
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("csp")
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"));
    assert!(csp.contains("object-src 'none'"));
    assert!(!csp.contains("'unsafe-eval'") && !csp.contains("script-src 'self' 'unsafe-inline'"));
    assert_eq!(
        headers.get("x-content-type-options").expect("nosniff"),
        "nosniff"
    );
    assert_eq!(
        headers.get("referrer-policy").expect("referrer"),
        "same-origin"
    );
    assert_eq!(
        headers.get("x-frame-options").expect("x-frame-options"),
        "DENY"
    );
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("nonce")
        .to_owned();
    let html = page.text().await.expect("html");
    // Every script element carries the header's nonce.
    let scripts = html.matches("<script").count();
    assert!(scripts >= 2, "{html}");
    assert_eq!(
        html.matches(&format!("nonce=\"{nonce}\"")).count(),
        scripts,
        "{html}"
    );
    // A nonce is good for one response only: the next page gets a new one.
    let again = client()
        .get(server.url("/"))
        .headers(browser(&server, Some(&session)))
        .send()
        .await
        .expect("page");
    let next_csp = again.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(next_csp.contains("'nonce-"), "{next_csp}");
    assert!(
        !next_csp.contains(&format!("'nonce-{nonce}'")),
        "the nonce was reused: {next_csp}"
    );
    // Every API response carries the headers too.
    let api = server
        .client()
        .get(server.url("/api/devices"))
        .send()
        .await
        .expect("api");
    assert_eq!(
        api.headers()
            .get("x-content-type-options")
            .expect("nosniff"),
        "nosniff"
    );
}

async fn the_last_admin_stays_and_roles_are_checked_on_every_request(db: TestDb) {
    let (_db, server) = start(db).await;
    // The operator becomes a viewer while signed in: the next request sees it.
    let session = sign_in(&server, "operator", PASSWORD)
        .await
        .expect("signs in");
    let demote = admin_patch(&server, "operator", serde_json::json!({"role": "viewer"})).await;
    assert_eq!(demote, 200);
    let refused = client()
        .post(server.url("/api/devices"))
        .headers(browser(&server, Some(&session)))
        .json(&serde_json::json!({"id": "Late01"}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 403);

    // Two admins (the tests' own and "boss"): one may go, the last may not.
    let gone = server
        .client()
        .delete(server.url("/api/users/boss"))
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), 204);
    let last = admin_patch(&server, "admin", serde_json::json!({"role": "operator"})).await;
    assert_eq!(last, 409);
    // An admin cannot reset their own password without the current one.
    let own = admin_patch(
        &server,
        "admin",
        serde_json::json!({"password": "taken over!!"}),
    )
    .await;
    assert_eq!(own, 403);
    let audit: Vec<Value> = server.get_json("/api/audit").await;
    for action in [
        "account_add",
        "account_role",
        "account_remove",
        "login",
        "device_add",
    ] {
        assert!(
            audit.iter().any(|e| e["action"] == action),
            "{action}: {audit:?}"
        );
    }
}

async fn revoking_a_sign_in_closes_its_live_socket(db: TestDb) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_db, server) = start(db).await;
    let open = |cookie: String| {
        let mut request = format!("ws://{}/ws", server.http)
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("cookie", cookie.parse().expect("cookie"));
        request
            .headers_mut()
            .insert("origin", server.url("").parse().expect("origin"));
        tokio_tungstenite::connect_async(request)
    };
    let closes = |ws: common::Ws| common::closed_within(ws, std::time::Duration::from_secs(5));
    // Sign-out closes the socket of that session.
    let session = sign_in(&server, "viewer", PASSWORD)
        .await
        .expect("signs in");
    let (ws, _) = open(format!("sightline_session={session}"))
        .await
        .expect("socket opens");
    let out = client()
        .post(server.url("/logout"))
        .headers(browser(&server, Some(&session)))
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 303);
    assert!(closes(ws).await, "the socket outlived its session");

    // Removing the account closes its sockets too.
    let session = sign_in(&server, "operator", PASSWORD)
        .await
        .expect("signs in");
    let (ws, _) = open(format!("sightline_session={session}"))
        .await
        .expect("socket opens");
    let removed = server
        .client()
        .delete(server.url("/api/users/operator"))
        .send()
        .await
        .expect("remove");
    assert_eq!(removed.status(), 204);
    assert!(closes(ws).await, "the socket outlived its account");
}

async fn the_openapi_document_covers_every_json_route(db: TestDb) {
    let (_db, server) = start(db).await;
    let doc: Value = server.get_json("/api/openapi.json").await;
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    // Every JSON route the router serves, except the document itself, its
    // page, and the HTML sign-in forms.
    let undocumented_by_design = ["/api/openapi.json", "/api/docs", "/login", "/logout"];
    let json: BTreeSet<(String, String)> = server::http::route_rules()
        .into_iter()
        .filter(|r| r.kind == server::http::routes::Kind::Api)
        .filter(|r| !undocumented_by_design.contains(&r.path.as_str()))
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    assert_eq!(documented, json);
    // Every signed-in operation names its role and both ways to sign in.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            if path == "/api/health" {
                continue;
            }
            assert!(
                op["x-required-role"].is_string(),
                "{method} {path} has no x-required-role"
            );
            // HTTP ingest takes a device's own secret, never an account's.
            if op["x-required-role"] == "device" {
                assert!(
                    op["security"].is_null()
                        || op["security"] == serde_json::json!([{"device": []}]),
                    "{method} {path}: {}",
                    op["security"]
                );
                assert!(op["responses"]["200"]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("Committed")));
            } else {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"session": []}, {"token": []}])
                );
            }
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} lacks 401"
            );
        }
    }
    let (status, page) = server.get("/api/docs").await.expect("docs");
    assert_eq!(status, 200);
    assert!(page.contains("/api/devices/{id}/commands") && page.contains("operator"));
}

/// Runs `sql` on the server's database directly, as a test's way of moving
/// a row through time.
async fn execute(db: &TestDb, sql: &str) {
    use sea_orm::ConnectionTrait;
    let conn = sea_orm::Database::connect(&db.url).await.expect("connect");
    conn.execute_unprepared(sql).await.expect("sql");
    conn.close().await.expect("close");
}

/// The status of `GET /api/me` with a session cookie.
async fn me_with(server: &TestServer, session: &str) -> u16 {
    client()
        .get(server.url("/api/me"))
        .header(COOKIE, format!("sightline_session={session}"))
        .send()
        .await
        .expect("me")
        .status()
        .as_u16()
}

/// However busy, a session ends 30 days after sign-in.
async fn sessions_end_thirty_days_after_sign_in(db: TestDb) {
    let (db, server) = start(db).await;
    let now = server::clock::now_ms();
    let day = 86_400_000;
    let old = sign_in(&server, "viewer", PASSWORD).await.expect("old");
    let young = sign_in(&server, "viewer", PASSWORD).await.expect("young");
    for (session, age) in [(&old, 30 * day + 1000), (&young, 30 * day - 60_000)] {
        let hash = server::store::registry::hash_secret(session);
        execute(
            &db,
            &format!(
                "UPDATE login_session SET created_at = {} WHERE id_hash = '{hash}'",
                now - age
            ),
        )
        .await;
    }
    // Both were used a moment ago, so only the 30-day cap can end one.
    assert_eq!(me_with(&server, &young).await, 200);
    assert_eq!(me_with(&server, &old).await, 401);
}

/// An open live socket is use of its session: a dashboard left open on a
/// wall stays signed in past the idle limit, while a session nobody uses
/// ends at it.
async fn an_open_live_socket_keeps_its_session_in_use(db: TestDb) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_db, server) = start_with(db, |c| {
        c.session_idle_minutes = 1;
        c.live_recheck = std::time::Duration::from_millis(200);
    })
    .await;
    let watching = sign_in(&server, "viewer", PASSWORD).await.expect("a");
    let idle = sign_in(&server, "viewer", PASSWORD).await.expect("b");
    let mut request = format!("ws://{}/ws", server.http)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "cookie",
        format!("sightline_session={watching}")
            .parse()
            .expect("cookie"),
    );
    request
        .headers_mut()
        .insert("origin", server.url("").parse().expect("origin"));
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("socket opens");

    // Both sessions were last used 58 s ago: 2 s before they go idle.
    let store = server::store::Store::open(&server.database_url)
        .await
        .expect("store");
    let aged = server::clock::now_ms() - 58_000;
    let hash = |s: &str| server::store::registry::hash_secret(s);
    for session in [&watching, &idle] {
        store
            .touch_session(&hash(session), aged)
            .await
            .expect("age the session");
    }
    let last_seen = |session: String| {
        let store = store.clone();
        async move {
            store
                .session(&hash(&session))
                .await
                .expect("read")
                .map(|s| s.last_seen_at)
        }
    };
    wait_for("the socket to use its session", || async {
        last_seen(watching.clone()).await > Some(aged)
    })
    .await;
    wait_for("the idle limit to pass", || async {
        server::clock::now_ms() > aged + 61_000
    })
    .await;
    assert_eq!(last_seen(idle.clone()).await, Some(aged), "nothing used it");
    assert_eq!(me_with(&server, &idle).await, 401, "the idle session ended");
    assert_eq!(
        me_with(&server, &watching).await,
        200,
        "the watched session lives on"
    );
    drop(socket);
}

/// Over HTTPS every response tells browsers to stay on HTTPS (HSTS); over
/// plain HTTP, where it would mean nothing, it is not sent.
#[tokio::test]
async fn https_responses_carry_hsts() {
    let db = TestDb::sqlite();
    let certs = tempfile::tempdir().expect("dir");
    let files = server::edge::tls::write_dev_cert(certs.path(), &["localhost".to_owned()])
        .expect("dev certificate");
    let (_db, server) = start_with(db, |c| {
        c.tls_cert = Some(files.cert.clone());
        c.tls_key = Some(files.key.clone());
    })
    .await;
    let https = server.https.expect("an HTTPS listener");
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&files.ca)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", https.port()),
            &format!("https://localhost:{}/api/health", https.port()),
        ])
        .output()
        .await
        .expect("curl");
    let headers = String::from_utf8_lossy(&curl.stdout).to_lowercase();
    assert!(
        headers.contains("strict-transport-security: max-age=31536000"),
        "{headers}{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let plain = client()
        .get(server.url("/api/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("strict-transport-security").is_none());
}

/// Every test above runs on SQLite and on PostgreSQL: sessions, tokens,
/// accounts and the audit log are hand-written SQL on both.
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                super::$test(super::common::TestDb::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = super::common::TestDb::postgres().await {
                    super::$test(db).await;
                }
            }
        }
    )*};
}

on_both_databases!(
    every_route_answers_each_role_as_the_table_says,
    parallel_wrong_passwords_cannot_outrun_the_limit,
    trailing_slashes_do_not_reach_unguarded_pages,
    methods_a_route_does_not_serve_get_405_without_reaching_a_handler,
    refusals_say_where_to_go,
    cross_origin_state_changes_are_refused,
    sign_out_password_change_and_idleness_end_sessions,
    failed_sign_ins_are_throttled_per_account_and_per_address,
    behind_a_trusted_proxy_each_browser_has_its_own_sign_in_limit,
    behind_a_trusted_proxy_that_terminates_tls_cookies_are_secure_with_hsts,
    api_tokens_act_for_their_account_until_revoked,
    responses_carry_security_headers_and_the_page_nonce,
    the_last_admin_stays_and_roles_are_checked_on_every_request,
    revoking_a_sign_in_closes_its_live_socket,
    the_openapi_document_covers_every_json_route,
    sessions_end_thirty_days_after_sign_in,
    an_open_live_socket_keeps_its_session_in_use,
);
