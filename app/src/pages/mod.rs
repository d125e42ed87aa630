//! The dashboard's pages.

pub mod commands;
pub mod device;
pub mod fleet;

use leptos::prelude::*;

use crate::live::LinkState;

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
#[component]
pub fn LiveBadge(state: RwSignal<LinkState>, skipped: RwSignal<u64>) -> impl IntoView {
    view! {
        <span class=move || state.get().class() data-testid="link-state">
            {move || state.get().label()}
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
