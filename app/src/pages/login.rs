//! The sign-in page: a plain HTML form that posts to the server's
//! `/login`, so signing in works before (or without) the WASM.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

/// What the server's `error` code means, for the person signing in.
fn explain(code: &str) -> &'static str {
    match code {
        "invalid" => "Wrong name or password.",
        "throttled" => "Too many failed attempts. Wait a few minutes and try again.",
        "unavailable" => "Signing in is unavailable right now. Try again shortly.",
        _ => "Could not sign in.",
    }
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let error = move || query.read().get("error").map(|code| explain(&code));
    let bye = move || query.read().get("bye").is_some();
    let next = move || query.read().get("next").unwrap_or_else(|| "/".to_owned());
    // After a failed attempt the server sends the name back, so only the
    // password is typed again.
    let name = move || query.read().get("name").unwrap_or_default();
    view! {
        <Title text="Sign in · Sightline"/>
        <section class="panel login">
            <h1>"Sign in"</h1>
            {move || error().map(|e| view! { <p class="error" role="alert" data-testid="login-error">{e}</p> })}
            <Show when=bye>
                <p class="notice" role="status">"You are signed out."</p>
            </Show>
            <form method="post" action="/login" class="login-form">
                <label>
                    "Name"
                    <input name="name" autocomplete="username" required=true maxlength="64" value=name
                        data-testid="login-name" autofocus=move || name().is_empty()/>
                </label>
                <label>
                    "Password"
                    <input name="password" type="password" autocomplete="current-password" required=true
                        data-testid="login-password" autofocus=move || !name().is_empty()/>
                </label>
                <input type="hidden" name="next" value=next/>
                <button type="submit">"Sign in"</button>
            </form>
        </section>
    }
}
