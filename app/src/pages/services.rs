//! The admin page's service accounts: MQTT logins for tools that read the
//! feed of committed readings. Each is listed with its grants; a new one's
//! secret is shown once, with a ready-made `mosquitto_sub` line; removing
//! one asks first.

use leptos::prelude::*;

use super::manage::CopyButton;
use crate::api::{get_service_accounts, AddServiceAccount, RemoveServiceAccount};
use crate::format::utc_minute;
use crate::model::{CreatedServiceAccount, ServiceAccount};

#[component]
pub fn ServiceAccounts(changed: Callback<()>) -> impl IntoView {
    let list = Resource::new(|| (), |_| get_service_accounts());
    let add = ServerAction::<AddServiceAccount>::new();
    let error = RwSignal::new(None::<String>);
    let created = RwSignal::new(None::<CreatedServiceAccount>);
    let refresh = Callback::new(move |()| {
        list.refetch();
        changed.run(());
    });
    Effect::new(move |_| match add.value().get() {
        Some(Ok(made)) => {
            error.set(None);
            created.set(Some(made));
            refresh.run(());
        }
        Some(Err(e)) => error.set(Some(super::error_message(e))),
        None => {}
    });
    view! {
        <section class="panel" data-testid="service-accounts">
            <h2>"Service accounts"</h2>
            <p class="hint">"MQTT logins for tools such as Node-RED or a Python script: they receive every stored reading on "
                <code>"sensor/<device>"</code> " within their grants, and may be allowed to send commands on "
                <code>"command/<device>"</code> "."</p>
            <Transition fallback=|| view! { <p class="loading">"Loading service accounts…"</p> }>
                {move || Suspend::new(async move {
                    match list.await {
                        Ok(accounts) if accounts.is_empty() => view! {
                            <p class="empty" data-testid="no-service-accounts">"No service accounts yet."</p>
                        }.into_any(),
                        Ok(accounts) => view! {
                            <div class="table-wrap" tabindex="0" role="region" aria-label="Service accounts"><table class="table stacks" data-testid="service-account-list">
                                <thead><tr><th>"Name"</th><th>"May subscribe to"</th><th>"May send commands to"</th><th>"Created (UTC)"</th><th></th></tr></thead>
                                <tbody>
                                    {accounts.into_iter().map(|account| view! { <ServiceRow account removed=refresh/> }).collect_view()}
                                </tbody>
                            </table></div>
                        }.into_any(),
                        Err(e) => view! { <p class="error">{format!("Could not load service accounts: {e}")}</p> }.into_any(),
                    }
                })}
            </Transition>
            {move || created.get().map(|made| view! { <NewService made/> })}
            <h3>"Add a service account"</h3>
            <ActionForm action=add attr:class="add-form">
                <div class="field-group">
                    <label>"Name" <input name="name" required=true maxlength="64" autocomplete="off" data-testid="new-service-name"
                        aria-describedby="new-service-error"/></label>
                </div>
                <div class="field-group">
                    <label>"May subscribe to" <input name="grants" value="sensor/#" autocomplete="off" data-testid="new-service-grants"
                        aria-describedby="new-service-error"/></label>
                </div>
                <div class="field-group">
                    <label>"May send commands to" <input name="publish" value="" placeholder="none" autocomplete="off" data-testid="new-service-publish"
                        aria-describedby="new-service-error"/></label>
                </div>
                <button type="submit" data-testid="add-service">"Add"</button>
            </ActionForm>
            <p id="new-service-error" class="error field-error" aria-live="polite" data-testid="new-service-error">{move || error.get()}</p>
            <p class="hint">"Grants, separated by spaces: " <code>"sensor/#"</code> ", " <code>"sensor/+"</code> " or " <code>"sensor/<device id>"</code>
                " to subscribe; " <code>"command/+"</code> " (every device) or " <code>"command/<device id>"</code>
                " to publish commands, tracked like the dashboard's. Also: " <code>"sightline service add"</code> ", or " <code>"POST /api/service-accounts"</code> "."</p>
        </section>
    }
}

/// A service account just made: its secret, once, and a line to try it.
#[component]
fn NewService(made: CreatedServiceAccount) -> impl IntoView {
    let host = {
        #[cfg(feature = "hydrate")]
        {
            window()
                .location()
                .hostname()
                .unwrap_or_else(|_| "localhost".into())
        }
        #[cfg(not(feature = "hydrate"))]
        {
            "localhost".to_owned()
        }
    };
    let topic = made
        .account
        .subscribe
        .first()
        .cloned()
        .unwrap_or_else(|| "sensor/#".into());
    let example = format!(
        "mosquitto_sub -h {host} -u {} -P '{}' -q 1 -v -t '{topic}'",
        made.account.name, made.secret
    );
    let node = super::manage::scrolled_into_view();
    view! {
        <div class="notice secret-panel" role="status" data-testid="new-service" node_ref=node>
            <p>"Service account " <strong>{made.account.name.clone()}</strong> " created. Copy its secret now; it is not shown again."</p>
            <p class="secret-row">
                <code class="secret" data-testid="new-service-secret">{made.secret.clone()}</code>
                <CopyButton text=made.secret.clone() what="secret"/>
            </p>
            <p class="hint">"Try it:"</p>
            <p class="command-line">
                <code>{example.clone()}</code>
                <CopyButton text=example what="command"/>
            </p>
        </div>
    }
}

#[component]
fn ServiceRow(account: ServiceAccount, removed: Callback<()>) -> impl IntoView {
    let remove = ServerAction::<RemoveServiceAccount>::new();
    let error = RwSignal::new(None::<String>);
    Effect::new(move |_| match remove.value().get() {
        Some(Ok(())) => removed.run(()),
        Some(Err(e)) => error.set(Some(super::error_message(e))),
        None => {}
    });
    let name = account.name.clone();
    let remove_it = {
        let name = name.clone();
        Callback::new(move |()| {
            remove.dispatch(RemoveServiceAccount { name: name.clone() });
        })
    };
    view! {
        <tr data-service=name.clone()>
            <td data-label="Name">{name.clone()}</td>
            <td data-label="May subscribe to"><code>{account.subscribe.join(" ")}</code></td>
            <td data-label="May send commands to"><code>{account.publish.join(" ")}</code></td>
            <td data-label="Created">{utc_minute(account.created_at)}</td>
            <td>
                <super::ConfirmButton label="Remove…" question=format!("Remove {name} and disconnect it?")
                    yes="Yes, remove" on_yes=remove_it/>
                <p class="error field-error" aria-live="polite">{move || error.get()}</p>
            </td>
        </tr>
    }
}
