//! The dashboard's pages.

pub mod device;
pub mod fleet;

use leptos::prelude::*;

use crate::live::LinkState;

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
