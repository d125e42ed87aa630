//! The fleet overview at `/`: one card per device with its latest value per
//! metric and a live "last seen".

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_meta::Title;

use super::{debounced_reload, LiveBadge};
use crate::api::{get_fleet, AddDevice};
use crate::format;
use crate::live::LinkState;
use crate::model::{Counters, DeviceSummary, Fleet};

#[component]
pub fn FleetPage() -> impl IntoView {
    let fleet = Resource::new(|| (), |_| get_fleet());
    let link = RwSignal::new(LinkState::Connecting);
    let skipped = RwSignal::new(0u64);
    let reload = debounced_reload(move || fleet.refetch());
    view! {
        <Title text="Fleet · Sightline"/>
        <Transition fallback=|| view! { <p class="loading">"Loading devices…"</p> }>
            {move || Suspend::new(async move {
                match fleet.await {
                    Ok(f) => view! { <FleetView fleet=f reload link skipped/> }.into_any(),
                    Err(e) => view! { <p class="error">{format!("Could not load devices: {e}")}</p> }.into_any(),
                }
            })}
        </Transition>
        <AddDeviceForm added=Callback::new(move |()| fleet.refetch())/>
    }
}

/// Creates a device and shows its secret, once. It lives outside the
/// fleet's `Transition`, so reloading the cards keeps the secret on screen.
#[component]
fn AddDeviceForm(added: Callback<()>) -> impl IntoView {
    let add = ServerAction::<AddDevice>::new();
    let result = add.value();
    Effect::new(move |_| {
        if let Some(Ok(_)) = result.get() {
            added.run(());
        }
    });
    view! {
        <section class="add-device">
            <h2>"Add a device"</h2>
            <ActionForm action=add attr:class="add-form">
                <label for="new-device-id">"Device id"</label>
                <input id="new-device-id" type="text" name="id" required maxlength="64"
                    autocomplete="off" placeholder="Device001" data-testid="new-device-id"/>
                <button type="submit" data-testid="add-device">"Create"</button>
            </ActionForm>
            {move || match result.get() {
                Some(Ok(c)) => view! {
                    <div class="notice" role="status" data-testid="new-device">
                        <p>"Device " <strong>{c.id.clone()}</strong> " created. Copy its secret now; it is not shown again:"</p>
                        <code class="secret" data-testid="new-secret">{c.secret.clone()}</code>
                        <p class="hint">
                            "Connect with user name " <code>{c.id.clone()}</code>
                            " and the secret as password, or with the secret alone as user name (ThingsBoard style)."
                        </p>
                    </div>
                }.into_any(),
                Some(Err(e)) => {
                    let message = match e {
                        ServerFnError::ServerError(m) => m,
                        other => other.to_string(),
                    };
                    view! { <p class="error" role="alert" data-testid="add-error">{message}</p> }.into_any()
                }
                None => ().into_any(),
            }}
        </section>
    }
}

/// One device card's live state.
#[derive(Clone, Copy)]
struct Card {
    id: StoredValue<String>,
    summary: RwSignal<DeviceSummary>,
}

#[component]
fn FleetView(
    fleet: Fleet,
    reload: Callback<()>,
    link: RwSignal<LinkState>,
    skipped: RwSignal<u64>,
) -> impl IntoView {
    #[cfg(not(feature = "hydrate"))]
    let _ = reload;
    let now = RwSignal::new(fleet.generated_at);
    let counters = RwSignal::new(fleet.counters.clone());
    let cards = RwSignal::new(
        fleet
            .devices
            .into_iter()
            .map(|d| Card {
                id: StoredValue::new(d.id.clone()),
                summary: RwSignal::new(d),
            })
            .collect::<Vec<_>>(),
    );

    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        use crate::live::{connect, LiveEvent};
        use crate::model::{ClientMsg, ServerMsg};
        super::follow_clock(now);
        connect(&ClientMsg::SubscribeAll, link, move |event| match event {
            LiveEvent::Message(ServerMsg::Readings { readings }) => {
                apply_readings(cards, &readings);
            }
            LiveEvent::Message(ServerMsg::Stats {
                counters: c,
                rejected,
            }) => {
                counters.set(c);
                apply_rejected(cards, &rejected);
            }
            LiveEvent::Message(ServerMsg::Lagged { skipped: n }) => {
                skipped.update(|s| *s += n);
                reload.run(());
            }
            LiveEvent::Message(ServerMsg::Presence { devices }) => {
                apply_presence(cards, devices);
            }
            LiveEvent::Opened { reconnect } => {
                if reconnect {
                    reload.run(());
                }
            }
        });
    });

    view! {
        <section class="page-head">
            <h1>"Fleet"</h1>
            <LiveBadge state=link skipped/>
        </section>
        <CountersBar counters/>
        <Show
            when=move || cards.with(|c| !c.is_empty())
            fallback=|| {
                view! {
                    <p class="empty" data-testid="no-devices">
                        "No devices yet. Publish a reading, for example: "
                        <code>"mosquitto_pub -p 1883 -t \"sensor/Device001\" -m \"{'temp':22}\""</code>
                    </p>
                }
            }
        >
            <ul class="cards" data-testid="devices">
                <For each=move || cards.get() key=|card| card.id.get_value() let:card>
                    <DeviceCard card now/>
                </For>
            </ul>
        </Show>
    }
}

/// Updates the online status of the cards that changed.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn apply_presence(cards: RwSignal<Vec<Card>>, changes: Vec<crate::model::Presence>) {
    cards.with_untracked(|cards| {
        for change in changes {
            if let Some(card) = cards
                .iter()
                .find(|c| c.id.with_value(|id| *id == change.device))
            {
                card.summary.update(|s| s.presence = Some(change));
            }
        }
    });
}

/// Folds new readings into the cards, adding a card for a device seen for
/// the first time. Cards stay sorted by device id.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn apply_readings(cards: RwSignal<Vec<Card>>, readings: &[crate::model::Reading]) {
    let mut by_device: HashMap<&str, Vec<&crate::model::Reading>> = HashMap::new();
    for r in readings {
        by_device.entry(r.device.as_str()).or_default().push(r);
    }
    for (device, rs) in by_device {
        let existing = cards.with_untracked(|c| {
            c.iter()
                .find(|c| c.id.with_value(|id| id == device))
                .copied()
        });
        let card = match existing {
            Some(card) => card,
            None => {
                let card = Card {
                    id: StoredValue::new(device.to_owned()),
                    summary: RwSignal::new(DeviceSummary {
                        id: device.to_owned(),
                        first_seen: rs.first().map_or(0, |r| r.ts),
                        last_seen: 0,
                        latest: Vec::new(),
                        rejected: 0,
                        presence: None,
                    }),
                };
                cards.update(|c| {
                    c.push(card);
                    c.sort_by(|a, b| a.id.with_value(|x| b.id.with_value(|y| x.cmp(y))));
                });
                card
            }
        };
        card.summary.update(|s| {
            for r in rs {
                s.apply(r);
            }
        });
    }
}

#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn apply_rejected(cards: RwSignal<Vec<Card>>, rejected: &[(String, u64)]) {
    cards.with_untracked(|cards| {
        for card in cards {
            let count = card
                .id
                .with_value(|id| rejected.iter().find(|(d, _)| d == id).map(|(_, n)| *n));
            if let Some(n) = count {
                if card.summary.with_untracked(|s| s.rejected) != n {
                    card.summary.update(|s| s.rejected = n);
                }
            }
        }
    });
}

#[component]
pub fn CountersBar(counters: RwSignal<Counters>) -> impl IntoView {
    view! {
        <dl class="counters" data-testid="counters">
            <div><dt>"stored"</dt><dd data-testid="stored">{move || counters.with(|c| c.stored)}</dd></div>
            <div><dt>"rejected"</dt><dd data-testid="rejected-total">{move || counters.with(|c| c.rejected)}</dd></div>
            <div><dt>"dropped"</dt><dd data-testid="dropped">{move || counters.with(|c| c.dropped)}</dd></div>
            <div><dt>"refused at edge"</dt><dd data-testid="refused">{move || counters.with(|c| c.refused)}</dd></div>
        </dl>
    }
}

#[component]
fn DeviceCard(card: Card, now: RwSignal<i64>) -> impl IntoView {
    let summary = card.summary;
    let id = card.id.get_value();
    let href = format!("/devices/{id}");
    let online = move || summary.with(format::is_online);
    view! {
        <li class="card" data-device=id.clone()>
            <a href=href class="card-link">
                <span class="card-head">
                    <span class=move || if online() { "dot on" } else { "dot off" }
                        data-testid="presence"
                        title=move || summary.with(format::status)></span>
                    <span class="device-id">{id.clone()}</span>
                </span>
                <span class="metrics">
                    {move || {
                        summary
                            .with(|s| s.latest.clone())
                            .into_iter()
                            .map(|l| {
                                view! {
                                    <span class="metric" data-metric=l.metric.clone()>
                                        <span class="metric-name">{l.metric.clone()}</span>
                                        <span class="metric-value">{format::value(l.value)}</span>
                                    </span>
                                }
                            })
                            .collect_view()
                    }}
                </span>
                <span class="card-foot">
                    "last seen "
                    <span data-testid="last-seen">{move || format::ago(summary.with(|s| format::last_seen(s, now.get())), now.get())}</span>
                    {move || {
                        let n = summary.with(|s| s.rejected);
                        (n > 0).then(|| view! { <span class="rejected">{format!(" · {n} rejected")}</span> })
                    }}
                </span>
            </a>
        </li>
    }
}
