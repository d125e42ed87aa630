//! Sightline's user interface: Leptos components rendered on the server and
//! hydrated in the browser, plus the types both sides share.
//!
//! - [`model`]: the serde types of the JSON API and the live WebSocket.
//! - [`api`]: server functions that feed the pages, and the [`api::Backend`]
//!   trait the server implements (so this crate never sees the database).
//! - [`pages`]: the fleet overview and the device page.
//! - [`chart`]: history charts (min/max band and average) drawn with
//!   charming (ECharts), with zoom.
//! - [`range`]: the device page's time range and its URL form.
//! - [`live`]: the browser's WebSocket client.
//! - [`format`]: number and time formatting that is identical on both sides.

// Leptos views are deeply nested types; computing their layout for
// hydration needs more than the default recursion depth.
#![recursion_limit = "256"]

pub mod api;
pub mod chart;
pub mod format;
pub mod live;
pub mod model;
pub mod pages;
pub mod range;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::{path, SsrMode};

/// The HTML document around the app. Only the server renders it; the
/// browser hydrates `<body>`, which must therefore contain exactly `<App/>`.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    // The browser learns who is signed in from `<body>`; see
    // `pages::CurrentAccount`.
    let me = use_context::<model::Me>();
    let account = me.as_ref().map(|m| m.name.clone());
    let role = me.map(|m| m.role.label());
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <link rel="stylesheet" href="/pkg/main.css"/>
                <link rel="icon" href="/pkg/favicon.svg" type="image/svg+xml"/>
                // ECharts must be a global before the WASM renders a chart,
                // so it loads (deferred) ahead of the hydration scripts.
                <script src="/pkg/echarts.min.js" defer nonce=leptos::nonce::use_nonce()></script>
                // Installs the service worker that answers a page load
                // with a self-retrying page while the server is down.
                <script src="/pkg/register-sw.js" defer nonce=leptos::nonce::use_nonce()></script>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body data-account=account data-role=role>
                <App/>
            </body>
        </html>
    }
}

/// Moves keyboard focus to the page's content. Without scripts the link's
/// own `#content` does it; once hydrated, the router would take the click
/// for a navigation instead, so focus is moved here.
fn skip_to_content(ev: leptos::ev::MouseEvent) {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let main = document()
            .get_element_by_id("content")
            .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok());
        if let Some(main) = main {
            ev.prevent_default();
            let _ = main.focus();
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = ev;
}

/// The root component: page chrome and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    pages::CurrentAccount::provide();
    view! {
        <Title text="Sightline"/>
        <Router>
            // The first stop for a keyboard: past the top bar to the page.
            <a class="skip-link" href="#content" on:click=skip_to_content>"Skip to content"</a>
            <header class="topbar">
                <A href="/" attr:class="brand">"Sightline"</A>
                <span class="tagline">"live sensor fleet"</span>
                <pages::AccountMenu/>
            </header>
            <main id="content" tabindex="-1">
                <Routes fallback=|| view! { <p class="empty">"Page not found."</p> }>
                    // Async rendering sends each page complete, so it shows
                    // real values even where scripts never run.
                    <Route path=path!("/") view=pages::fleet::FleetPage ssr=SsrMode::Async/>
                    <Route path=path!("/devices/:id") view=pages::device::DevicePage ssr=SsrMode::Async/>
                    <Route path=path!("/login") view=pages::login::LoginPage ssr=SsrMode::Async/>
                    <Route path=path!("/admin") view=pages::admin::AdminPage ssr=SsrMode::Async/>
                    <Route path=path!("/account") view=pages::account::AccountPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}
