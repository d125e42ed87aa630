//! The command service's deadlines under `tokio::time::pause()`: a TTL, a
//! timeout and a resend each happen at exactly their time, and a day
//! passes in no real time. Then what each refusal of the command API
//! answers, asked of the router itself (`oneshot`), with no socket.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use app::model::{Command, CommandRequest, CommandState};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use server::acl::Route;
use server::broker::Broker;
use server::clock::{now_ms, Clock};
use server::command::Commands;
use server::metrics::Metrics;
use server::store::Store;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use common::Scratch;

const DAY: i64 = 86_400_000;

/// The command service on a real SQLite file and router, reading tokio's
/// clock. Each test pauses that clock once its command is accepted (which
/// reads the database): paused, it moves only when every task waits, and
/// then straight to the next timer, so a database wait while paused would
/// run out every pool timeout at once.
struct Service {
    commands: Arc<Commands>,
    metrics: Arc<Metrics>,
    clock: Clock,
    stop: CancellationToken,
    _broker: Broker,
    _scratch: Scratch,
}

impl Service {
    async fn start() -> Self {
        let scratch = Scratch::new();
        let store = Store::open(&scratch.sqlite_url()).await.expect("open");
        store.add_device("D", now_ms()).await.expect("device");
        let broker = Broker::start(16);
        let clock = Clock::tokio();
        let metrics = Arc::new(Metrics::default());
        let (commands, saver) = Commands::start(
            store,
            &broker,
            metrics.clone(),
            (64 * 1024, 1_000),
            clock,
            None,
        )
        .await
        .expect("start");
        let stop = CancellationToken::new();
        tokio::spawn(saver.run(stop.clone()));
        tokio::spawn({
            let commands = commands.clone();
            let stop = stop.clone();
            async move { commands.run_timer(stop).await }
        });
        Self {
            commands,
            metrics,
            clock,
            stop,
            _broker: broker,
            _scratch: scratch,
        }
    }

    async fn send(&self, persistent: bool, timeout_ms: i64, ttl_ms: i64) -> Command {
        let request = CommandRequest {
            name: "ping".into(),
            params: serde_json::json!({}),
            two_way: true,
            persistent,
            timeout_ms: Some(timeout_ms),
            ttl_ms: Some(ttl_ms),
        };
        self.commands.send("D", request).await.expect("accepted")
    }

    /// Lets time run to `ms` (on the service's clock).
    async fn until(&self, ms: i64) {
        let wait = ms - self.clock.now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
        }
    }

    /// Command `id` as the service holds it.
    async fn get(&self, id: &str) -> Command {
        self.commands.get(id).await.expect("read").expect("known")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A deadline lands at its time, never early, and at most a few
/// milliseconds late: the command was accepted before the clock was paused
/// (accepting reads the database), so the timer's first sleep was set on
/// the running clock, and tokio's timers round up to whole milliseconds.
fn at_exactly(actual: Option<i64>, expected: i64) {
    let actual = actual.expect("a time");
    assert!(
        (expected..=expected + 5).contains(&actual),
        "at {actual}, expected {expected}"
    );
}

#[tokio::test]
async fn a_persistent_command_waits_exactly_its_ttl_and_a_day_takes_no_time() {
    let real = std::time::Instant::now();
    let s = Service::start().await;
    let c = s.send(true, 5_000, DAY).await;
    assert_eq!(c.state, CommandState::Queued, "the device is offline");
    tokio::time::pause();

    s.until(c.created_at + DAY - 2).await;
    assert_eq!(s.get(&c.id).await.state, CommandState::Queued);

    s.until(c.created_at + DAY + 2).await;
    let expired = s.get(&c.id).await;
    assert_eq!(expired.state, CommandState::Expired);
    at_exactly(expired.completed_at, c.created_at + DAY);
    assert_eq!(
        expired.error.as_deref(),
        Some("not delivered within its TTL of 24 h")
    );
    assert_eq!(s.metrics.commands.expired.load(Ordering::Relaxed), 1);
    assert!(
        real.elapsed() < Duration::from_secs(20),
        "a paused day took {:?}",
        real.elapsed()
    );
}

#[tokio::test]
async fn a_sent_command_expires_exactly_at_its_timeout_for_an_answer() {
    let s = Service::start().await;
    let native = Route {
        native: true,
        thingsboard: false,
    };
    s.commands.subscribed("D", 1, native).await;
    let c = s.send(false, 5_000, DAY).await;
    assert_eq!(c.state, CommandState::Sent);
    let sent = c.sent_at.expect("sent");
    tokio::time::pause();

    s.until(sent + 2_000).await;
    s.commands.delivered("D", &c.id);
    assert_eq!(s.get(&c.id).await.state, CommandState::Delivered);

    s.until(sent + 4_998).await;
    assert_eq!(s.get(&c.id).await.state, CommandState::Delivered);
    s.until(sent + 5_002).await;
    let expired = s.get(&c.id).await;
    assert_eq!(expired.state, CommandState::Expired);
    at_exactly(expired.completed_at, sent + 5_000);
    assert_eq!(expired.error.as_deref(), Some("no answer within 5 s"));
}

#[tokio::test]
async fn a_persistent_command_to_a_silent_session_is_resent_each_timeout_until_its_ttl() {
    let s = Service::start().await;
    let native = Route {
        native: true,
        thingsboard: false,
    };
    s.commands.subscribed("D", 1, native).await;
    let c = s.send(true, 1_000, 3_500).await;
    let first = c.sent_at.expect("sent");
    tokio::time::pause();
    // Each timeout counts from the send before it.
    let mut previous = first;
    for n in 1..=3 {
        s.until(previous + 1_000 + 6).await;
        let again = s.get(&c.id).await;
        assert_eq!(again.state, CommandState::Sent, "resend {n}");
        at_exactly(again.sent_at, previous + 1_000);
        previous = again.sent_at.expect("sent");
    }
    // The TTL ran out 3.5 s after the first send, so the fourth timeout
    // ends it.
    s.until(previous + 1_000 + 6).await;
    let expired = s.get(&c.id).await;
    assert_eq!(expired.state, CommandState::Expired);
    at_exactly(expired.completed_at, previous + 1_000);
    assert_eq!(
        expired.error.as_deref(),
        Some("not acknowledged within 1 s")
    );
    assert_eq!(s.metrics.commands.sent.load(Ordering::Relaxed), 4);
}

/// One request to the router, with the admin's token; the status and body.
async fn ask(
    router: &axum::Router,
    token: &str,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("answered");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn each_command_refusal_answers_with_its_own_status() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let token = common::admin_token(&url).await;
    let running = server::start(common::test_config(&url), server::Listeners::default())
        .await
        .expect("start");
    running
        .state
        .store
        .add_device("D", now_ms())
        .await
        .expect("device");
    let router = server::http::router(running.state.clone());
    let post = Method::POST;
    let too_large = format!(
        r#"{{"name":"ping","params":{{"x":"{}"}}}}"#,
        "y".repeat(70_000)
    );
    let cases: &[(Method, &str, &str, StatusCode, &str)] = &[
        (
            post.clone(),
            "/api/devices/Nope/commands",
            r#"{"name":"ping"}"#,
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            post.clone(),
            "/api/devices/D/commands",
            r#"{"name":"a b"}"#,
            StatusCode::BAD_REQUEST,
            "is not valid",
        ),
        (
            post.clone(),
            "/api/devices/D/commands",
            r#"{"name":"#,
            StatusCode::BAD_REQUEST,
            "invalid command",
        ),
        (
            post.clone(),
            "/api/devices/D/commands",
            &too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the limit is",
        ),
        (
            Method::GET,
            "/api/commands/nope",
            "",
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            Method::GET,
            "/api/devices/Nope/commands",
            "",
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            Method::GET,
            "/api/devices/D/commands?limit=x",
            "",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
    ];
    for (method, uri, body, status, says) in cases {
        let (got, answer) = ask(&router, &token, method.clone(), uri, body).await;
        assert_eq!(got, *status, "{method} {uri}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(says),
            "{method} {uri}: {error:?} should say {says:?}"
        );
    }
    // And a command that is accepted: 201, failed at once (nobody
    // subscribed), saying why.
    let (got, answer) = ask(
        &router,
        &token,
        post,
        "/api/devices/D/commands",
        r#"{"name":"ping"}"#,
    )
    .await;
    assert_eq!(got, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["state"], "failed");
    drop(router);
    running.shutdown().await;
}
