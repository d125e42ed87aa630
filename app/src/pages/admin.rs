//! The admin page: operator accounts and the audit log.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{get_accounts, get_audit};
use crate::format::utc_minute as format_time;

#[component]
pub fn AdminPage() -> impl IntoView {
    let accounts = Resource::new(|| (), |_| get_accounts());
    let audit = Resource::new(|| (), |_| get_audit());
    view! {
        <Title text="Admin · Sightline"/>
        <h1>"Admin"</h1>
        <section class="panel">
            <h2>"Accounts"</h2>
            <p class="hint">"Add accounts with " <code>"sightline user add"</code> " or " <code>"POST /api/users"</code> "."</p>
            <Suspense fallback=|| view! { <p class="loading">"Loading accounts…"</p> }>
                {move || Suspend::new(async move {
                    match accounts.await {
                        Ok(list) => view! {
                            <div class="table-wrap"><table class="table" data-testid="accounts">
                                <thead><tr><th>"Name"</th><th>"Role"</th><th>"Created"</th><th>"Password changed"</th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|a| view! {
                                        <tr>
                                            <td>{a.name}</td>
                                            <td>{a.role.label()}</td>
                                            <td>{format_time(a.created_at)}</td>
                                            <td>{format_time(a.password_changed_at)}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                        }.into_any(),
                        Err(e) => view! { <p class="error">{format!("Could not load accounts: {e}")}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
        <section class="panel">
            <h2>"Audit log"</h2>
            <Suspense fallback=|| view! { <p class="loading">"Loading the audit log…"</p> }>
                {move || Suspend::new(async move {
                    match audit.await {
                        Ok(events) => view! {
                            <div class="table-wrap"><table class="table" data-testid="audit">
                                <thead><tr><th>"When (UTC)"</th><th>"Who"</th><th>"What"</th><th>"Target"</th><th>"Detail"</th><th>"From"</th></tr></thead>
                                <tbody>
                                    {events.into_iter().map(|e| view! {
                                        <tr>
                                            <td>{format_time(e.at)}</td>
                                            <td>{e.actor}</td>
                                            <td>{e.action}</td>
                                            <td>{e.target.unwrap_or_default()}</td>
                                            <td class="detail">{e.detail.unwrap_or_default()}</td>
                                            <td>{e.ip.unwrap_or_default()}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                        }.into_any(),
                        Err(e) => view! { <p class="error">{format!("Could not load the audit log: {e}")}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
