//! The admin page: operator accounts (add, change role, remove), service
//! accounts (in [`super::services`]) and the audit log.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{get_accounts, get_audit, AddAccount, RemoveAccount, SetRole};
use crate::format::{utc_minute as format_time, utc_second as format_second};
use crate::model::{Account, Role};

#[component]
pub fn AdminPage() -> impl IntoView {
    let accounts = Resource::new(|| (), |_| get_accounts());
    let audit = Resource::new(|| (), |_| get_audit());
    let add = ServerAction::<AddAccount>::new();
    // Whatever changed, the lists are read again; a refusal changes
    // nothing, so it stays on screen beside the field it is about.
    let changed = Callback::new(move |()| {
        accounts.refetch();
        audit.refetch();
    });
    let name_error = RwSignal::new(None::<String>);
    let password_error = RwSignal::new(None::<String>);
    Effect::new(move |_| match add.value().get() {
        Some(Ok(_)) => {
            name_error.set(None);
            password_error.set(None);
            changed.run(());
        }
        // The server's message says which field it is about.
        Some(Err(e)) => {
            let message = super::error_message(e);
            let about_password = message.contains("password");
            password_error.set(about_password.then(|| message.clone()));
            name_error.set((!about_password).then_some(message));
        }
        None => {}
    });
    let invalid =
        |error: RwSignal<Option<String>>| move || error.with(Option::is_some).then_some("true");
    view! {
        <Title text="Admin · Sightline"/>
        <h1>"Admin"</h1>
        <section class="panel">
            <h2>"Accounts"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading accounts…"</p> }>
                {move || Suspend::new(async move {
                    match accounts.await {
                        Ok(list) => view! {
                            <div class="table-wrap" tabindex="0" role="region" aria-label="Accounts"><table class="table stacks" data-testid="accounts">
                                <thead><tr><th>"Name"</th><th>"Role"</th><th>"Created (UTC)"</th><th>"Password changed"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|account| view! { <AccountRow account changed/> }).collect_view()}
                                </tbody>
                            </table></div>
                        }.into_any(),
                        Err(e) => view! { <p class="error">{format!("Could not load accounts: {e}")}</p> }.into_any(),
                    }
                })}
            </Transition>
            <h3>"Add an account"</h3>
            <ActionForm action=add attr:class="add-form">
                <div class="field-group">
                    <label>"Name" <input name="name" required=true maxlength="64" autocomplete="off" data-testid="new-account-name"
                        aria-describedby="new-name-error" aria-invalid=invalid(name_error)/></label>
                    <p id="new-name-error" class="error field-error" aria-live="polite" data-testid="new-name-error">{move || name_error.get()}</p>
                </div>
                <div class="field-group">
                    <label>"Password" <input name="password" type="password" required=true minlength="8" autocomplete="new-password" data-testid="new-account-password"
                        aria-describedby="new-password-error" aria-invalid=invalid(password_error)/></label>
                    <p id="new-password-error" class="error field-error" aria-live="polite" data-testid="new-password-error">{move || password_error.get()}</p>
                </div>
                <label>"Role" <RoleSelect selected=Role::Viewer/></label>
                <button type="submit" data-testid="add-account">"Add"</button>
            </ActionForm>
            <p class="hint">"Also: " <code>"sightline user add"</code> ", or " <code>"POST /api/users"</code> ". Changing a password signs the account out everywhere."</p>
        </section>
        <super::services::ServiceAccounts changed/>
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

/// One account: its role picker and "Remove…", each with its own error
/// beside it. A refused role change puts the picker back on the role the
/// account still has.
#[component]
fn AccountRow(account: Account, changed: Callback<()>) -> impl IntoView {
    let set_role = ServerAction::<SetRole>::new();
    let remove = ServerAction::<RemoveAccount>::new();
    let saved = account.role;
    let chosen = RwSignal::new(saved);
    let role_error = RwSignal::new(None::<String>);
    let remove_error = RwSignal::new(None::<String>);
    Effect::new(move |_| match set_role.value().get() {
        Some(Ok(())) => changed.run(()),
        Some(Err(e)) => {
            chosen.set(saved);
            role_error.set(Some(super::error_message(e)));
        }
        None => {}
    });
    Effect::new(move |_| match remove.value().get() {
        Some(Ok(())) => changed.run(()),
        Some(Err(e)) => remove_error.set(Some(super::error_message(e))),
        None => {}
    });
    let name = account.name.clone();
    let change = {
        let name = name.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            role_error.set(None);
            set_role.dispatch(SetRole {
                name: name.clone(),
                role: chosen.get_untracked().label().to_owned(),
            });
        }
    };
    let remove_it = {
        let name = name.clone();
        Callback::new(move |()| {
            remove.dispatch(RemoveAccount { name: name.clone() });
        })
    };
    let role_error_id = format!("role-error-{name}");
    let set_role_path = <SetRole as leptos::server_fn::ServerFn>::PATH;
    view! {
        <tr data-account=name.clone()>
            <td data-label="Name">{name.clone()}</td>
            <td data-label="Role">
                // Without scripts the form posts to the server function
                // itself; once hydrated, `change` sends it and keeps the
                // picker in step.
                <form class="inline-form" method="post" action=set_role_path on:submit=change>
                    <input type="hidden" name="name" value=name.clone()/>
                    <select name="role" aria-label=format!("Role of {name}") aria-describedby=role_error_id.clone()
                        prop:value=move || chosen.get().label()
                        on:change=move |ev| {
                            if let Some(role) = Role::parse(&event_target_value(&ev)) {
                                chosen.set(role);
                            }
                        }>
                        {role_options(saved)}
                    </select>
                    <button type="submit" class="link">"Change"</button>
                </form>
                <p id=role_error_id class="error field-error" aria-live="polite" data-testid="role-error">{move || role_error.get()}</p>
            </td>
            <td data-label="Created">{format_time(account.created_at)}</td>
            <td data-label="Password changed">{format_time(account.password_changed_at)}</td>
            <td>
                // Removing an account signs it out everywhere and cannot
                // be undone, so it asks first.
                <super::ConfirmButton label="Remove…" question=format!("Remove {name} and sign it out everywhere?")
                    yes="Yes, remove" on_yes=remove_it/>
                <p class="error field-error" aria-live="polite" data-testid="remove-error">{move || remove_error.get()}</p>
            </td>
        </tr>
    }
}

/// The role picker of the add form.
#[component]
fn RoleSelect(selected: Role) -> impl IntoView {
    view! {
        <select name="role" aria-label="Role">
            {role_options(selected)}
        </select>
    }
}

/// One option per role, with `selected` chosen.
fn role_options(selected: Role) -> impl IntoView {
    Role::ALL
        .into_iter()
        .map(|r| view! { <option value=r.label() selected=r == selected>{r.label()}</option> })
        .collect_view()
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
