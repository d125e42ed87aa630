//! The access rule of every route the router serves, kept next to the
//! routes themselves so that a route cannot exist without one.
//!
//! JSON routes are added through [`Table::at`], which registers the handler
//! and its rule together. Pages and server functions come from Leptos; their
//! rules are matched by path in [`page_access`] and [`server_fn_access`],
//! which refuse to build a router for a path they do not know.

use std::collections::HashMap;

use app::model::Role;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;

use super::AppState;

/// Who may use a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not: health checks, the sign-in page, static
    /// assets.
    Public,
    /// A signed-in account with at least this role.
    Least(Role),
    /// A device, which proves itself to the handler with its own secret
    /// (HTTP ingest). Sessions and API tokens are not looked at.
    Device,
}

/// What a route serves, which decides how a refusal looks: JSON routes
/// and sockets get 401/403, pages a redirect to the sign-in page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Api,
    Page,
    ServerFn,
    Socket,
    Asset,
}

/// One route: method, path in axum's syntax, and who may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub method: Method,
    pub path: String,
    pub access: Access,
    pub kind: Kind,
}

/// A router under construction with the rules of its routes.
pub struct Table {
    pub router: Router<AppState>,
    pub rules: Vec<Rule>,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            router: Router::new(),
            rules: Vec::new(),
        }
    }
}

impl Table {
    /// Adds a JSON route and its rule in one step.
    pub fn at<H, T>(mut self, method: Method, path: &str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("{method} {path}: unsupported method"));
        self.router = self.router.route(path, on(filter, handler));
        self.rules.push(Rule {
            method,
            path: path.to_owned(),
            access,
            kind: Kind::Api,
        });
        self
    }
}

/// The rule of a Leptos page.
pub fn page_access(path: &str) -> Access {
    match path {
        "/login" => Access::Public,
        "/" | "/devices/{id}" | "/account" => Access::Least(Role::Viewer),
        "/admin" => Access::Least(Role::Admin),
        other => panic!("the page {other} has no access rule in http::routes::page_access"),
    }
}

/// The rule of a server function, by its path.
pub fn server_fn_access(path: &str) -> Access {
    match path {
        "/_app/fleet" | "/_app/device" | "/_app/history" | "/_app/commands" | "/_app/tokens"
        | "/_app/add_token" | "/_app/revoke_token" | "/_app/desired" => Access::Least(Role::Viewer),
        "/_app/add_device"
        | "/_app/send_command"
        | "/_app/set_desired"
        | "/_app/set_label"
        | "/_app/set_enabled"
        | "/_app/rotate_secret"
        | "/_app/delete_device" => Access::Least(Role::Operator),
        "/_app/accounts"
        | "/_app/audit"
        | "/_app/add_account"
        | "/_app/set_role"
        | "/_app/remove_account"
        | "/_app/service_accounts"
        | "/_app/add_service_account"
        | "/_app/remove_service_account" => Access::Least(Role::Admin),
        other => panic!("the server function {other} has no access rule in http::routes"),
    }
}

/// Rules looked up by method and matched path.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    by_route: HashMap<(Method, String), Rule>,
}

impl Rules {
    pub fn new(rules: &[Rule]) -> Self {
        let mut by_route = HashMap::new();
        for rule in rules {
            by_route.insert((rule.method.clone(), rule.path.clone()), rule.clone());
        }
        Self { by_route }
    }

    /// Whether some method of this path has a rule: a request with another
    /// method reaches no handler, only axum's 405.
    pub fn knows_path(&self, path: &str) -> bool {
        self.by_route.keys().any(|(_, p)| p == path)
    }

    /// The rule for a request. HEAD is served by GET handlers, so it
    /// follows GET's rule.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Rule> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.by_route.get(&(method.clone(), path.to_owned()))
    }
}
