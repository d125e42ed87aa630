//! The dashboard's pages.

pub mod account;
pub mod admin;
pub mod commands;
pub mod desired;
pub mod device;
pub mod fleet;
pub mod login;
pub mod manage;
pub mod services;

use leptos::prelude::*;

use crate::live::LinkState;
use crate::model::{Me, Role};

/// The signed-in account, known synchronously on both sides: the server
/// has it from the request, and writes it on `<body>` for the browser to
/// read at start. (A resource would be created in a different order on the
/// two sides of hydration.) Sign-in and sign-out reload the page, so it
/// never changes while a page lives.
#[derive(Clone, Debug, Default)]
pub struct CurrentAccount(pub Option<Me>);

impl CurrentAccount {
    pub fn provide() {
        provide_context(Self(Self::read()));
    }

    #[cfg(not(feature = "hydrate"))]
    fn read() -> Option<Me> {
        use_context::<Me>()
    }

    #[cfg(feature = "hydrate")]
    fn read() -> Option<Me> {
        let body = web_sys::window()?.document()?.body()?;
        let name = body.get_attribute("data-account")?;
        let role = Role::parse(&body.get_attribute("data-role")?)?;
        Some(Me { name, role })
    }

    pub fn get() -> Option<Me> {
        use_context::<Self>().and_then(|c| c.0)
    }
}

/// Renders `children` only for an account with at least role `least`. The
/// server enforces every role itself; this only hides what would be
/// refused.
#[component]
pub fn WhenRole(least: Role, children: ChildrenFn) -> impl IntoView {
    let allowed = CurrentAccount::get().is_some_and(|m| m.role >= least);
    allowed.then(|| children())
}

/// The signed-in account's name and role, the admin link and "Sign out",
/// in the top bar. Sign-out is a plain form, so it works without WASM.
#[component]
pub fn AccountMenu() -> impl IntoView {
    CurrentAccount::get().map(|m| {
        let admin = m.role == Role::Admin;
        view! {
            <nav class="account">
                {admin.then(|| view! { <a href="/admin">"Admin"</a> })}
                <a class="who" href="/account" data-testid="who" title="Your account and API tokens">{m.name} <small>{m.role.label()}</small></a>
                <form method="post" action="/logout">
                    <button type="submit" class="link">"Sign out"</button>
                </form>
            </nav>
        }
    })
}

/// A destructive action's button: `label` first, then `question` (read
/// out as an alert) with `yes`, which runs `on_yes`, and "Cancel". One
/// stray click does nothing.
#[component]
pub fn ConfirmButton(
    #[prop(into)] label: String,
    #[prop(into)] question: String,
    #[prop(into)] yes: String,
    on_yes: Callback<()>,
) -> impl IntoView {
    let asking = RwSignal::new(false);
    let label = StoredValue::new(label);
    view! {
        <Show
            when=move || asking.get()
            fallback=move || view! {
                <button type="button" class="link danger" on:click=move |_| asking.set(true)>{label.get_value()}</button>
            }
        >
            <span class="inline-form">
                <span role="alert">{question.clone()}</span>
                <button type="button" class="link danger" on:click=move |_| on_yes.run(())>{yes.clone()}</button>
                <button type="button" class="link" on:click=move |_| asking.set(false)>"Cancel"</button>
            </span>
        </Show>
    }
}

/// Sets the HTTP status of the page being rendered on the server (pages
/// render asynchronously, so the status is still unsent). A no-op in the
/// browser.
pub fn set_status(code: u16) {
    #[cfg(feature = "ssr")]
    if let (Some(response), Ok(code)) = (
        use_context::<leptos_axum::ResponseOptions>(),
        http::StatusCode::from_u16(code),
    ) {
        response.set_status(code);
    }
    #[cfg(not(feature = "ssr"))]
    let _ = code;
}

/// A server function's error as a person should read it: the server's own
/// message when it sent one.
pub fn error_message(e: ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(m) => m,
        other => other.to_string(),
    }
}

/// Sets `now` to the browser's clock and keeps it current once a second,
/// for the page's relative times ("5 s ago"). Call it inside an `Effect`,
/// whose cleanup stops the timer.
#[cfg(feature = "hydrate")]
pub fn follow_clock(now: RwSignal<i64>) {
    let tick = set_interval_with_handle(
        move || now.set(js_sys::Date::now() as i64),
        std::time::Duration::from_secs(1),
    );
    if let Ok(handle) = tick {
        on_cleanup(move || handle.clear());
    }
    now.set(js_sys::Date::now() as i64);
}

/// Wraps a page's "reload data" action so that it runs at most once every
/// two seconds: a viewer that keeps falling behind must not turn into a
/// stream of full history reloads.
pub fn debounced_reload(reload: impl Fn() + Send + Sync + 'static) -> Callback<()> {
    #[cfg(feature = "hydrate")]
    let last = StoredValue::new(f64::NEG_INFINITY);
    Callback::new(move |()| {
        #[cfg(feature = "hydrate")]
        {
            let now = js_sys::Date::now();
            if now - last.get_value() < 2000.0 {
                return;
            }
            last.set_value(now);
        }
        reload();
    })
}

/// The live-connection badge and the "fell behind" notice shared by pages.
/// With `fixed` true (a custom or zoomed range, which does not follow the
/// clock) a working link says "connected · fixed range" rather than "live",
/// which would promise a moving chart.
#[component]
pub fn LiveBadge(
    state: RwSignal<LinkState>,
    skipped: RwSignal<u64>,
    #[prop(optional, into)] fixed: Option<Signal<bool>>,
) -> impl IntoView {
    let label = move || match state.get() {
        LinkState::Live if fixed.is_some_and(|f| f.get()) => "connected · fixed range",
        other => other.label(),
    };
    view! {
        <span class=move || state.get().class() data-testid="link-state">
            {label}
        </span>
        <Show when=move || { skipped.get() > 0 }>
            <p class="notice" role="status" data-testid="lagged">
                {move || {
                    format!(
                        "Live updates fell behind: {} batches were skipped. History was reloaded.",
                        skipped.get(),
                    )
                }}
            </p>
        </Show>
    }
}
