//! HTTP: the server-rendered dashboard, its static assets, the JSON API and
//! the live WebSocket, all on one axum router behind one gate.
//!
//! - [`routes`]: every route's access rule, declared with the route.
//! - [`guard`]: the gate (who is asking, CSRF, roles) and security headers.
//! - [`login`]: sign-in and sign-out forms.
//! - [`accounts`]: the JSON API of accounts, tokens and the audit log.
//! - `devices`, `desired`, `commands`, `history`, `export` and `operations`: the rest
//!   of the JSON API, one file per resource.
//! - `pages`: the data behind the Leptos pages' server functions.
//! - [`socket`]: the live WebSocket.
//! - `error`: [`HttpError`], what each failure answers with.

pub mod accounts;
mod commands;
mod desired;
mod devices;
mod error;
mod export;
pub mod guard;
mod history;
pub mod login;
pub mod mqtt_ws;
pub mod openapi;
mod operations;
mod pages;
mod readings;
pub mod routes;
pub mod serve;
mod services;
pub mod socket;

pub(crate) use error::json_body;
pub use error::HttpError;

use std::sync::Arc;

use app::api::SharedBackend;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{header, HeaderValue, Method};
use axum::routing::get;
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::audit::Audit;
use crate::auth::Auth;
use crate::command::Commands;
use crate::edge::Sessions;
use crate::metrics::Metrics;
use crate::presence::Tracker;
use crate::store::Store;
use guard::Gate;
use pages::PageData;
use routes::{Access, Kind, Rule, Table};
use socket::Live;

/// Everything the handlers share.
#[derive(Clone, Debug, FromRef)]
pub struct AppState {
    pub leptos: LeptosOptions,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<Tracker>,
    /// Live device sessions, so that disabling a device disconnects it.
    pub sessions: Arc<Sessions>,
    /// The broker's port and whether it is TLS, as shown to operators who
    /// connect a new device: plain MQTT if it listens, else MQTT over TLS.
    pub broker: Option<(u16, bool)>,
    /// In cluster mode, so that disabling a device disconnects it on every
    /// instance.
    pub bus: Option<crate::bus::Bus>,
    pub commands: Arc<Commands>,
    /// Devices' desired states, set from the API and the device page.
    pub desired: Arc<crate::desired::Desired>,
    /// The feed of committed readings, so that removing a service account
    /// ends its sessions.
    pub feed: Arc<crate::feed::Feed>,
    pub live: Live,
    /// How long raw readings are kept (`None`: forever), so that history
    /// queries of older periods go to rollups.
    pub retain_raw_ms: Option<i64>,
    pub auth: Arc<Auth>,
    pub audit: Audit,
    /// The largest request body accepted.
    pub max_request_bytes: usize,
    /// HTTP ingest's way to the writer, closed at shutdown.
    pub ingest: crate::door::Door<crate::ingest::Ingest>,
    /// MQTT over WebSocket: the device edge, behind a door shutdown closes.
    pub mqtt_ws: mqtt_ws::MqttOverWs,
    /// The publish rate of each device that sends over HTTP.
    pub device_rates: Arc<crate::edge::rate::DeviceRates>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// Every JSON route with its rule. The router and [`route_rules`] are both
/// built from this one list.
fn api_table() -> Table {
    use app::model::Role::{Admin, Operator, Viewer};
    use Access::{Device, Least, Public};
    use Method as M;
    Table::default()
        .at(M::GET, "/api/health", Public, operations::health)
        .at(M::GET, "/api/stats", Least(Viewer), operations::stats)
        .at(M::GET, "/metrics", Least(Viewer), operations::prometheus)
        .at(M::GET, "/api/devices", Least(Viewer), devices::devices)
        .at(
            M::POST,
            "/api/devices",
            Least(Operator),
            devices::add_device,
        )
        .at(M::GET, "/api/devices/{id}", Least(Viewer), devices::device)
        .at(
            M::POST,
            "/api/devices/{id}/readings",
            Device,
            readings::device,
        )
        .at(
            M::POST,
            "/api/v1/{token}/telemetry",
            Device,
            readings::thingsboard,
        )
        .at(
            M::DELETE,
            "/api/devices/{id}",
            Least(Operator),
            devices::delete_device,
        )
        .at(
            M::POST,
            "/api/devices/{id}/secret",
            Least(Operator),
            devices::rotate_secret,
        )
        .at(
            M::PUT,
            "/api/devices/{id}/enabled",
            Least(Operator),
            devices::set_enabled,
        )
        .at(
            M::PUT,
            "/api/devices/{id}/label",
            Least(Operator),
            devices::set_label,
        )
        .at(
            M::GET,
            "/api/devices/{id}/desired",
            Least(Viewer),
            desired::get_desired,
        )
        .at(
            M::PUT,
            "/api/devices/{id}/desired",
            Least(Operator),
            desired::set_desired,
        )
        .at(
            M::DELETE,
            "/api/devices/{id}/desired",
            Least(Operator),
            desired::clear_desired,
        )
        .at(
            M::GET,
            "/api/devices/{id}/export",
            Least(Viewer),
            export::export,
        )
        .at(
            M::GET,
            "/api/devices/{id}/series",
            Least(Viewer),
            history::series,
        )
        .at(
            M::GET,
            "/api/devices/{id}/commands",
            Least(Viewer),
            commands::device_commands,
        )
        .at(
            M::POST,
            "/api/devices/{id}/commands",
            Least(Operator),
            commands::send_command,
        )
        .at(
            M::GET,
            "/api/commands/{id}",
            Least(Viewer),
            commands::command,
        )
        .at(M::GET, "/api/me", Least(Viewer), accounts::me)
        .at(
            M::PUT,
            "/api/me/password",
            Least(Viewer),
            accounts::change_own_password,
        )
        .at(M::GET, "/api/tokens", Least(Viewer), accounts::tokens)
        .at(M::POST, "/api/tokens", Least(Viewer), accounts::add_token)
        .at(
            M::DELETE,
            "/api/tokens/{id}",
            Least(Viewer),
            accounts::revoke_token,
        )
        .at(
            M::GET,
            "/api/service-accounts",
            Least(Admin),
            services::list,
        )
        .at(
            M::POST,
            "/api/service-accounts",
            Least(Admin),
            services::add,
        )
        .at(
            M::DELETE,
            "/api/service-accounts/{name}",
            Least(Admin),
            services::remove,
        )
        .at(M::GET, "/api/users", Least(Admin), accounts::users)
        .at(M::POST, "/api/users", Least(Admin), accounts::add_user)
        .at(
            M::PATCH,
            "/api/users/{name}",
            Least(Admin),
            accounts::change_user,
        )
        .at(
            M::DELETE,
            "/api/users/{name}",
            Least(Admin),
            accounts::remove_user,
        )
        .at(M::GET, "/api/audit", Least(Admin), accounts::audit_log)
        .at(M::GET, "/api/openapi.json", Public, openapi::document)
        .at(M::GET, "/api/docs", Public, openapi::docs)
        .at(M::POST, "/login", Public, login::login)
        .at(M::POST, "/logout", Least(Viewer), login::logout)
}

/// Where the static bundle (WASM, JS, CSS, ECharts) is served.
pub const ASSETS_PREFIX: &str = "/pkg/";

/// The live WebSocket's path; it is served outside the compression layer.
const SOCKET_PATH: &str = "/ws";

/// Every route the router serves, with who may use it: the JSON routes,
/// the live socket, the Leptos pages and the server functions. Building
/// this panics if a page or server function has no rule, so a new one
/// cannot ship unguarded.
pub fn route_rules() -> Vec<Rule> {
    with_pages_and_socket(api_table().rules, DEFAULT_MQTT_WS_PATH)
}

/// Where MQTT over WebSocket is served unless `--mqtt-ws-path` says
/// otherwise.
pub const DEFAULT_MQTT_WS_PATH: &str = "/mqtt";

/// The JSON routes' rules with those of the socket, the assets, the
/// Leptos pages and the server functions.
fn with_pages_and_socket(mut rules: Vec<Rule>, mqtt_ws_path: &str) -> Vec<Rule> {
    // Devices log in inside the MQTT stream, as on TCP.
    rules.push(Rule {
        method: Method::GET,
        path: mqtt_ws_path.to_owned(),
        access: Access::Device,
        kind: Kind::Socket,
    });
    rules.push(Rule {
        method: Method::GET,
        path: ASSETS_PREFIX.to_owned(),
        access: Access::Public,
        kind: Kind::Asset,
    });
    rules.push(Rule {
        method: Method::GET,
        path: SOCKET_PATH.to_owned(),
        access: Access::Least(app::model::Role::Viewer),
        kind: Kind::Socket,
    });
    for listing in generate_route_list(app::App) {
        let path = listing.path().to_owned();
        for method in listing.methods() {
            rules.push(Rule {
                method: match method {
                    leptos_router::Method::Get => Method::GET,
                    leptos_router::Method::Post => Method::POST,
                    leptos_router::Method::Put => Method::PUT,
                    leptos_router::Method::Delete => Method::DELETE,
                    leptos_router::Method::Patch => Method::PATCH,
                },
                access: routes::page_access(&path),
                path: path.clone(),
                kind: Kind::Page,
            });
        }
    }
    for (path, method) in leptos::server_fn::axum::server_fn_paths() {
        rules.push(Rule {
            access: routes::server_fn_access(path),
            method,
            path: path.to_owned(),
            kind: Kind::ServerFn,
        });
    }
    rules
}

/// Builds the whole router, so tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    let backend: SharedBackend = Arc::new(PageData::from(&state));
    let routes = generate_route_list(app::App);
    let leptos = state.leptos.clone();
    let pkg = ServeDir::new(std::path::Path::new(&*leptos.site_root).join("pkg"));
    let api = api_table();
    let max_request_bytes = state.max_request_bytes;
    let gate = Gate {
        auth: state.auth.clone(),
        rules: Arc::new(routes::Rules::new(&with_pages_and_socket(
            api.rules,
            &state.mqtt_ws.path,
        ))),
        metrics: state.metrics.clone(),
        trusted_proxies: state.trusted_proxies.clone(),
    };
    let ws = Router::new()
        .route(SOCKET_PATH, get(socket::websocket))
        .with_state(state.live.clone());
    let mqtt_ws = Router::new()
        .route(&state.mqtt_ws.path, get(mqtt_ws::upgrade))
        .with_state(state.clone());

    Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || {
                guard::provide_request_context();
                provide_context(backend.clone());
            },
            move || app::shell(leptos.clone()),
        )
        .nest_service(
            "/pkg",
            // The bundle keeps fixed names, so browsers must revalidate it
            // or they would run a stale WASM against a new server.
            tower::ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::overriding(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache"),
                ))
                // The service worker lives in the bundle but serves page
                // loads for the whole site (`public/sw.js`).
                .layer(SetResponseHeaderLayer::overriding(
                    header::HeaderName::from_static("service-worker-allowed"),
                    HeaderValue::from_static("/"),
                ))
                .service(pkg),
        )
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(guard::provide_request_context, app::shell))
        .merge(api.router)
        .with_state(state)
        .layer(axum::middleware::from_fn(pages::bad_arguments_are_400))
        // The WASM and ECharts shrink to about a third when gzipped, which
        // matters most on the phones this dashboard is meant for.
        .layer(CompressionLayer::new())
        .merge(ws)
        .merge(mqtt_ws)
        .route_layer(axum::middleware::from_fn_with_state(gate, guard::gate))
        // Every body is bounded, whether a handler reads it with an
        // extractor (which `DefaultBodyLimit` governs) or as a stream (the
        // server functions), so no request can make the server buffer
        // more than this.
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(RequestBodyLimitLayer::new(max_request_bytes))
        .layer(axum::middleware::from_fn(guard::security_headers))
}
