//! The WASM entry point: hydrates the server-rendered page.
//!
//! Leptos' hydration script imports this module and calls [`hydrate`]; no
//! other code belongs here, so the server and the browser share every
//! component through the `app` crate.

// Leptos views are deeply nested types; computing their layout for
// hydration needs more than the default recursion depth.
#![recursion_limit = "256"]

/// Attaches the app to the server-rendered `<body>`.
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
    // Marks the page as interactive, for people's tools and the browser
    // tests, which must not click a control before its handler exists.
    if let Some(root) = leptos::prelude::document().document_element() {
        let _ = root.set_attribute("data-hydrated", "");
    }
}
