//! The account page: who is signed in, and their API tokens (create, shown
//! once with a copy button; revoke, after a confirmation).

use leptos::prelude::*;
use leptos_meta::Title;

use super::manage::CopyButton;
use super::CurrentAccount;
use crate::api::{get_tokens, AddToken, RevokeToken};
use crate::format::utc_minute;
use crate::model::{ApiToken, CreatedApiToken};

#[component]
pub fn AccountPage() -> impl IntoView {
    let me = CurrentAccount::get();
    let tokens = Resource::new(|| (), |_| get_tokens());
    let add = ServerAction::<AddToken>::new();
    let label = RwSignal::new(String::new());
    let add_error = RwSignal::new(None::<String>);
    // A successful change reads the list again; a refusal stays beside the
    // field it is about.
    Effect::new(move |_| match add.value().get() {
        Some(Ok(_)) => {
            add_error.set(None);
            label.set(String::new());
            tokens.refetch();
        }
        Some(Err(e)) => add_error.set(Some(super::error_message(e))),
        None => {}
    });
    let revoked = Callback::new(move |()| tokens.refetch());
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        add.dispatch(AddToken {
            label: label.get_untracked(),
        });
    };
    let (name, role) = me
        .map(|m| (m.name, m.role.label()))
        .unwrap_or_else(|| (String::new(), ""));
    view! {
        <Title text="Account · Sightline"/>
        <h1>"Your account"</h1>
        <section class="panel">
            <p data-testid="account-who">"Signed in as " <strong>{name}</strong> ", with the " <strong>{role}</strong> " role."</p>
        </section>
        <section class="panel" aria-labelledby="tokens-title">
            <h2 id="tokens-title">"API tokens"</h2>
            <p class="hint">
                "A token lets a script use the JSON API with your role: send it as "
                <code>"Authorization: Bearer <token>"</code>
                ". Revoke a token as soon as it may have leaked; it stops working at once."
            </p>
            <Transition fallback=|| view! { <p class="loading">"Loading tokens…"</p> }>
                {move || Suspend::new(async move {
                    match tokens.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty" data-testid="no-tokens">"No tokens yet."</p>
                        }.into_any(),
                        Ok(list) => view! { <TokenTable list revoked/> }.into_any(),
                        Err(e) => view! { <p class="error" role="alert">{format!("Could not load tokens: {e}")}</p> }.into_any(),
                    }
                })}
            </Transition>
            <h3>"New token"</h3>
            <form class="add-form" on:submit=create>
                <label class="field" for="token-label">"Label"</label>
                <input id="token-label" type="text" maxlength="64" autocomplete="off" required=true
                    placeholder="e.g. grafana, backup script" data-testid="token-label"
                    aria-describedby="token-error"
                    aria-invalid=move || add_error.with(Option::is_some).then_some("true")
                    prop:value=move || label.get()
                    on:input=move |ev| label.set(event_target_value(&ev))/>
                <button type="submit" data-testid="add-token">"Create token"</button>
                <p id="token-error" class="error field-error" aria-live="polite" data-testid="token-error">
                    {move || add_error.get()}
                </p>
            </form>
            {move || add.value().get().and_then(Result::ok).map(|created| view! { <NewToken created/> })}
        </section>
    }
}

/// A token just made: its secret, once, with a copy button and a line to
/// try it with.
#[component]
fn NewToken(created: CreatedApiToken) -> impl IntoView {
    let origin = {
        #[cfg(feature = "hydrate")]
        {
            window()
                .location()
                .origin()
                .unwrap_or_else(|_| "http://localhost:3000".into())
        }
        #[cfg(not(feature = "hydrate"))]
        {
            "http://localhost:3000".to_owned()
        }
    };
    let example = format!(
        "curl -H 'Authorization: Bearer {}' {origin}/api/devices",
        created.token
    );
    let node = super::manage::scrolled_into_view();
    view! {
        <div class="notice secret-panel" role="status" data-testid="new-token" node_ref=node>
            <p>"Token " <strong>{created.label.clone()}</strong> " created. Copy it now; it is not shown again."</p>
            <p class="secret-row">
                <code class="secret" data-testid="new-token-secret">{created.token.clone()}</code>
                <CopyButton text=created.token.clone() what="token"/>
            </p>
            <p class="hint">"Try it:"</p>
            <p class="command-line">
                <code>{example.clone()}</code>
                <CopyButton text=example what="command"/>
            </p>
        </div>
    }
}

/// The account's tokens, each with a "Revoke…" that asks first.
#[component]
fn TokenTable(list: Vec<ApiToken>, revoked: Callback<()>) -> impl IntoView {
    view! {
        <div class="table-wrap" tabindex="0" role="region" aria-label="API tokens">
            <table class="table stacks" data-testid="tokens">
                <thead><tr><th>"Label"</th><th>"Created (UTC)"</th><th>"Last used (UTC)"</th><th></th></tr></thead>
                <tbody>
                    {list.into_iter().map(|t| {
                        let (id, label) = (t.id.clone(), t.label.clone());
                        let (created, used) = (utc_minute(t.created_at), t.last_used_at.map_or_else(|| "never".to_owned(), utc_minute));
                        view! {
                            <tr data-token=id>
                                <td data-label="Label">{label}</td>
                                <td data-label="Created">{created}</td>
                                <td data-label="Last used">{used}</td>
                                <td><RevokeButton token=t revoked/></td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}

/// "Revoke…", asked first: scripts that use the token fail from that
/// moment, so one stray click must not do it.
#[component]
fn RevokeButton(token: ApiToken, revoked: Callback<()>) -> impl IntoView {
    let revoke = ServerAction::<RevokeToken>::new();
    let error = RwSignal::new(None::<String>);
    Effect::new(move |_| match revoke.value().get() {
        Some(Ok(())) => revoked.run(()),
        Some(Err(e)) => error.set(Some(super::error_message(e))),
        None => {}
    });
    let question = format!(
        "Revoke {}? Anything that uses it is refused from now on.",
        token.label
    );
    let id = token.id;
    let revoke_it = Callback::new(move |()| {
        revoke.dispatch(RevokeToken { id: id.clone() });
    });
    view! {
        <super::ConfirmButton label="Revoke…" question yes="Yes, revoke" on_yes=revoke_it/>
        <p class="error field-error" aria-live="polite" data-testid="revoke-error">{move || error.get()}</p>
    }
}
