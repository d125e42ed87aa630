//! The dashboard's pages.

pub mod device;
pub mod fleet;

use leptos::prelude::*;

use crate::live::LinkState;

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
