//! The admin page: operator accounts (add, change role, remove) and the
//! audit log.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{get_accounts, get_audit, AddAccount, RemoveAccount, SetRole};
use crate::format::{utc_minute as format_time, utc_second as format_second};
use crate::model::Role;

#[component]
pub fn AdminPage() -> impl IntoView {
    let accounts = Resource::new(|| (), |_| get_accounts());
    let audit = Resource::new(|| (), |_| get_audit());
    let add = ServerAction::<AddAccount>::new();
    let set_role = ServerAction::<SetRole>::new();
    let remove = ServerAction::<RemoveAccount>::new();
    // Whatever changed, the lists are read again.
    Effect::new(move |_| {
        let done = (
            add.version().get(),
            set_role.version().get(),
            remove.version().get(),
        );
        if done != (0, 0, 0) {
            accounts.refetch();
            audit.refetch();
        }
    });
    let error = move || {
        [
            add.value().get().and_then(|r| r.err()),
            set_role.value().get().and_then(|r| r.err()),
            remove.value().get().and_then(|r| r.err()),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(super::error_message)
    };
    view! {
        <Title text="Admin · Sightline"/>
        <h1>"Admin"</h1>
        <section class="panel">
            <h2>"Accounts"</h2>
            {move || error().map(|e| view! { <p class="error" role="alert" data-testid="admin-error">{e}</p> })}
            <Transition fallback=|| view! { <p class="loading">"Loading accounts…"</p> }>
                {move || Suspend::new(async move {
                    match accounts.await {
                        Ok(list) => view! {
                            <div class="table-wrap" tabindex="0" role="region" aria-label="Accounts"><table class="table stacks" data-testid="accounts">
                                <thead><tr><th>"Name"</th><th>"Role"</th><th>"Created (UTC)"</th><th>"Password changed"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|a| {
                                        let for_role = a.name.clone();
                                        let for_removal = a.name.clone();
                                        view! {
                                            <tr data-account=a.name.clone()>
                                                <td data-label="Name">{a.name.clone()}</td>
                                                <td data-label="Role">
                                                    <ActionForm action=set_role attr:class="inline-form">
                                                        <input type="hidden" name="name" value=for_role/>
                                                        <RoleSelect selected=a.role/>
                                                        <button type="submit" class="link">"Change"</button>
                                                    </ActionForm>
                                                </td>
                                                <td data-label="Created">{format_time(a.created_at)}</td>
                                                <td data-label="Password changed">{format_time(a.password_changed_at)}</td>
                                                <td><RemoveButton name=for_removal remove/></td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                        }.into_any(),
                        Err(e) => view! { <p class="error">{format!("Could not load accounts: {e}")}</p> }.into_any(),
                    }
                })}
            </Transition>
            <h3>"Add an account"</h3>
            <ActionForm action=add attr:class="add-form">
                <label>"Name" <input name="name" required=true maxlength="64" autocomplete="off" data-testid="new-account-name"/></label>
                <label>"Password" <input name="password" type="password" required=true minlength="8" autocomplete="new-password" data-testid="new-account-password"/></label>
                <label>"Role" <RoleSelect selected=Role::Viewer/></label>
                <button type="submit" data-testid="add-account">"Add"</button>
            </ActionForm>
            <p class="hint">"Also: " <code>"sightline user add"</code> ", or " <code>"POST /api/users"</code> ". Changing a password signs the account out everywhere."</p>
        </section>
        <section class="panel">
            <h2>"Audit log"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading the audit log…"</p> }>
                {move || Suspend::new(async move {
                    match audit.await {
                        Ok(events) => view! {
                            <AuditTable events/>
                        }.into_any(),
                        Err(e) => view! { <p class="error">{format!("Could not load the audit log: {e}")}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

/// The role picker of the admin forms.
#[component]
fn RoleSelect(selected: Role) -> impl IntoView {
    view! {
        <select name="role" aria-label="Role">
            {Role::ALL.into_iter().map(|r| view! {
                <option value=r.label() selected=r == selected>{r.label()}</option>
            }).collect_view()}
        </select>
    }
}

/// "Remove…", then the question and the button that removes: removing an
/// account signs it out everywhere and cannot be undone, so one stray
/// click must not do it.
#[component]
fn RemoveButton(name: String, remove: ServerAction<RemoveAccount>) -> impl IntoView {
    let asking = RwSignal::new(false);
    let question = StoredValue::new(format!("Remove {name} and sign it out everywhere?"));
    let name = StoredValue::new(name);
    view! {
        <Show
            when=move || asking.get()
            fallback=move || view! {
                <button type="button" class="link danger" on:click=move |_| asking.set(true)>"Remove…"</button>
            }
        >
            <ActionForm action=remove attr:class="inline-form">
                <input type="hidden" name="name" value=name.get_value()/>
                <span role="alert">{question.get_value()}</span>
                <button type="submit" class="link danger">"Yes, remove"</button>
                <button type="button" class="link" on:click=move |_| asking.set(false)>"Cancel"</button>
            </ActionForm>
        </Show>
    }
}

/// The audit log, newest first, filtered by actor, action and target as
/// typed; actions read as words, times to the second.
#[component]
fn AuditTable(events: Vec<crate::model::AuditEntry>) -> impl IntoView {
    use crate::model::action_words;
    let actor = RwSignal::new(String::new());
    let action = RwSignal::new(String::new());
    let target = RwSignal::new(String::new());
    let events = StoredValue::new(events);
    let matches = |field: &str, wanted: &str| {
        let wanted = wanted.trim().to_lowercase();
        wanted.is_empty() || field.to_lowercase().contains(&wanted)
    };
    let shown = move || {
        events.with_value(|all| {
            all.iter()
                .filter(|e| {
                    matches(&e.actor, &actor.get())
                        && (matches(action_words(&e.action), &action.get())
                            || matches(&e.action, &action.get()))
                        && matches(e.target.as_deref().unwrap_or(""), &target.get())
                })
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    let filter = move |label: &'static str, testid: &'static str, value: RwSignal<String>| {
        view! {
            <label class="field">{label}
                <input type="search" data-testid=testid prop:value=move || value.get()
                    on:input=move |ev| value.set(event_target_value(&ev))/>
            </label>
        }
    };
    view! {
        <div class="audit-filters">
            {filter("Who", "audit-actor", actor)}
            {filter("What", "audit-action", action)}
            {filter("Target", "audit-target", target)}
        </div>
        <div class="table-wrap" tabindex="0" role="region" aria-label="Audit log">
            <table class="table stacks" data-testid="audit">
                <thead><tr><th>"When (UTC)"</th><th>"Who"</th><th>"What"</th><th>"Target"</th><th>"Detail"</th><th>"From"</th></tr></thead>
                <tbody>
                    {move || shown().into_iter().map(|e| view! {
                        <tr data-action=e.action.clone()>
                            <td data-label="When">{format_second(e.at)}</td>
                            <td data-label="Who">{e.actor}</td>
                            <td data-label="What" title=e.action.clone()>{action_words(&e.action).to_owned()}</td>
                            <td data-label="Target">{e.target.unwrap_or_default()}</td>
                            <td data-label="Detail" class="detail">{e.detail.unwrap_or_default()}</td>
                            <td data-label="From">{e.ip.unwrap_or_default()}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
