//! The fleet overview at `/`: one card per device with its latest value per
//! metric, a sparkline of the last hour and a live "last seen"; search,
//! a status filter and sorting on top.
//!
//! Only the cards near the screen are in the document: the list keeps its
//! full height, and scrolling swaps cards in and out, so a fleet of
//! thousands costs what a screenful costs.

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_meta::Title;

use super::{debounced_reload, LiveBadge};
use crate::api::{get_fleet, AddDevice};
use crate::format;
use crate::live::LinkState;
use crate::model::{Counters, DeviceSummary, EpochMs, Fleet, Sparkline, SPARKLINE_MS};

/// The height of a card plus the gap below it, in CSS pixels; the
/// stylesheet gives cards exactly this (`.card` and `.cards`).
const ROW_PX: f64 = 192.0;

/// The narrowest card and the gap between cards, as in the stylesheet's
/// `grid-template-columns: repeat(auto-fill, minmax(260px, 1fr))`.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const CARD_MIN_PX: f64 = 260.0;
const GAP_PX: f64 = 12.0;

/// The most metrics a card shows; the rest are counted ("+2 more"), since
/// a card has one row for them.
const CARD_METRICS: usize = 3;

/// Cards rendered before the page has measured itself (and by the server):
/// enough to fill a large screen.
const FIRST_CARDS: usize = 48;

/// Rows rendered beyond the screen's edges, so fast scrolling rarely shows
/// an empty row.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const OVERSCAN_ROWS: usize = 3;

/// Which part of the list is on screen, as the browser last measured it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Viewport {
    columns: usize,
    first_row: usize,
    rows: usize,
}

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
        <super::WhenRole least=crate::model::Role::Operator>
            <AddDeviceForm added=Callback::new(move |()| fleet.refetch())/>
        </super::WhenRole>
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
                Some(Ok(c)) => view! { <super::manage::SecretPanel credentials=c what="created"/> }.into_any(),
                Some(Err(e)) => {
                    let message = super::error_message(e);
                    view! { <p class="error" role="alert" data-testid="add-error">{message}</p> }.into_any()
                }
                None => ().into_any(),
            }}
        </section>
    }
}

/// One device card's live state.
#[derive(Clone, Copy, PartialEq)]
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
                ..
            }) => {
                counters.set(c);
                apply_rejected(cards, &rejected);
            }
            LiveEvent::Message(ServerMsg::Lagged { skipped: n }) => {
                skipped.update(|s| *s += n);
                reload.run(());
            }
            // Commands are followed on the device page only.
            LiveEvent::Message(ServerMsg::Command { .. }) => {}
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
            <FleetList cards now link/>
        </Show>
    }
}

/// How the list is filtered and ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sort {
    Name,
    Status,
    LastSeen,
}

impl Sort {
    /// As in the URL and the picker: `name`, `status` or `last_seen`.
    fn name(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Status => "status",
            Self::LastSeen => "last_seen",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "status" => Self::Status,
            "last_seen" => Self::LastSeen,
            _ => Self::Name,
        }
    }
}

/// Search, filter and sort controls over a windowed list of cards.
#[component]
fn FleetList(
    cards: RwSignal<Vec<Card>>,
    now: RwSignal<i64>,
    link: RwSignal<LinkState>,
) -> impl IntoView {
    // The filters live in the URL (`?q=…&status=online&seen=1h&sort=status`),
    // so a filtered fleet can be shared and survives a reload; unknown
    // values fall back to the defaults.
    let query = leptos_router::hooks::use_query_map();
    let initial = |key: &str, allowed: &[&'static str], default: &'static str| {
        let value = query.with_untracked(|q| q.get(key)).unwrap_or_default();
        allowed
            .iter()
            .find(|a| **a == value)
            .copied()
            .unwrap_or(default)
            .to_owned()
    };
    let search = RwSignal::new(query.with_untracked(|q| q.get("q")).unwrap_or_default());
    let status = RwSignal::new(initial("status", &["online", "offline"], "all"));
    let seen = RwSignal::new(initial("seen", &["1h", "24h", "stale"], "any"));
    let sort = RwSignal::new(Sort::parse(&initial(
        "sort",
        &["status", "last_seen"],
        "name",
    )));
    #[cfg(feature = "hydrate")]
    {
        let navigate = leptos_router::hooks::use_navigate();
        Effect::new(move |first: Option<()>| {
            let mut parts = Vec::new();
            let q = search.get();
            if !q.is_empty() {
                parts.push(format!("q={}", js_sys::encode_uri_component(&q)));
            }
            for (key, value, default) in [
                ("status", status.get(), "all"),
                ("seen", seen.get(), "any"),
                ("sort", sort.get().name().to_owned(), "name"),
            ] {
                if value != default {
                    parts.push(format!("{key}={value}"));
                }
            }
            // The page as loaded is already in the URL.
            if first.is_some() {
                let url = if parts.is_empty() {
                    "/".to_owned()
                } else {
                    format!("/?{}", parts.join("&"))
                };
                navigate(
                    &url,
                    leptos_router::NavigateOptions {
                        replace: true,
                        scroll: false,
                        ..Default::default()
                    },
                );
            }
        });
    }
    let (initial_status, initial_seen, initial_sort) = (
        status.get_untracked(),
        seen.get_untracked(),
        sort.get_untracked(),
    );
    let shown = Memo::new(move |_| {
        let needle = search.get().trim().to_lowercase();
        let status = status.get();
        let sort = sort.get();
        // "Last seen" filters follow the clock; the others need not.
        let seen_within = match seen.get().as_str() {
            "1h" => Some((0, 3_600_000)),
            "24h" => Some((0, 86_400_000)),
            "stale" => Some((86_400_000, i64::MAX)),
            _ => None,
        };
        let now_for_seen = seen_within.map(|_| now.get());
        let mut list: Vec<Card> = cards
            .get()
            .into_iter()
            .filter(|c| {
                needle.is_empty()
                    || c.id.with_value(|id| id.to_lowercase().contains(&needle))
                    || c.summary.with(|s| {
                        s.label
                            .as_ref()
                            .is_some_and(|l| l.to_lowercase().contains(&needle))
                    })
            })
            .filter(|c| match status.as_str() {
                "online" => c.summary.with(format::is_online),
                "offline" => !c.summary.with(format::is_online),
                _ => true,
            })
            .filter(|c| match (seen_within, now_for_seen) {
                (Some((min, max)), Some(now)) => {
                    let age = now - c.summary.with(|s| format::last_seen(s, now));
                    (min..max).contains(&age)
                }
                _ => true,
            })
            .collect();
        match sort {
            Sort::Name => {}
            Sort::Status => list.sort_by_key(|c| !c.summary.with(format::is_online)),
            Sort::LastSeen => {
                let now = now.get();
                list.sort_by_key(|c| {
                    std::cmp::Reverse(c.summary.with(|s| format::last_seen(s, now)))
                });
            }
        }
        list
    });
    // `None` until the browser has measured the page; the server and the
    // first client render both show the first cards.
    let viewport = RwSignal::new(None::<Viewport>);
    let list = NodeRef::<leptos::html::Ul>::new();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let measure = move || {
            let Some(ul) = list.get_untracked() else {
                return;
            };
            let rect = ul.get_bounding_client_rect();
            let height = window()
                .inner_height()
                .ok()
                .and_then(|h| h.as_f64())
                .unwrap_or(800.0);
            let columns =
                (((rect.width() + GAP_PX) / (CARD_MIN_PX + GAP_PX)).floor() as usize).max(1);
            let first_row =
                ((-rect.top() / ROW_PX).floor().max(0.0) as usize).saturating_sub(OVERSCAN_ROWS);
            let rows = (height / ROW_PX).ceil() as usize + 2 * OVERSCAN_ROWS + 1;
            let next = Some(Viewport {
                columns,
                first_row,
                rows,
            });
            if viewport.get_untracked() != next {
                viewport.set(next);
            }
        };
        measure();
        let on_scroll = window_event_listener(leptos::ev::scroll, move |_| measure());
        let on_resize = window_event_listener(leptos::ev::resize, move |_| measure());
        on_cleanup(move || {
            on_scroll.remove();
            on_resize.remove();
        });
    });
    // After a search or filter shrinks the list, the measured first row
    // may be past its end until the next scroll: start no later than the
    // last screenful.
    let first_row = move |v: Viewport, cards: usize| {
        v.first_row
            .min(cards.div_ceil(v.columns).saturating_sub(v.rows))
    };
    let visible = move || {
        let list = shown.get();
        match viewport.get() {
            None => list.into_iter().take(FIRST_CARDS).collect::<Vec<_>>(),
            Some(v) => {
                let first = first_row(v, list.len());
                list.into_iter()
                    .skip(first * v.columns)
                    .take(v.rows * v.columns)
                    .collect()
            }
        }
    };
    // The list keeps the height of every row, with the rows above the
    // rendered ones as padding, so the scroll bar is honest.
    let style = move || {
        viewport.get().map(|v| {
            let cards = shown.with(Vec::len);
            let rows = cards.div_ceil(v.columns);
            format!(
                "padding-top:{}px;height:{}px",
                first_row(v, cards) as f64 * ROW_PX,
                (rows as f64 * ROW_PX - GAP_PX).max(0.0)
            )
        })
    };
    let set_sort = move |ev: leptos::ev::Event| sort.set(Sort::parse(&event_target_value(&ev)));
    let option = |value: &'static str, label: &'static str, chosen: &str| {
        view! { <option value=value selected=value == chosen>{label}</option> }
    };
    view! {
        <div class="fleet-controls">
            <input type="search" class="search" placeholder="Search ids and labels" aria-label="Search devices by id or label"
                data-testid="search" prop:value=move || search.get()
                on:input=move |ev| search.set(event_target_value(&ev))/>
            <select aria-label="Status" data-testid="status-filter" on:change=move |ev| status.set(event_target_value(&ev))>
                {option("all", "All", &initial_status)}
                {option("online", "Online", &initial_status)}
                {option("offline", "Offline", &initial_status)}
            </select>
            <select aria-label="Last seen" data-testid="seen-filter" on:change=move |ev| seen.set(event_target_value(&ev))>
                {option("any", "Seen any time", &initial_seen)}
                {option("1h", "Seen in the last hour", &initial_seen)}
                {option("24h", "Seen in the last day", &initial_seen)}
                {option("stale", "Not seen for a day", &initial_seen)}
            </select>
            <select aria-label="Sort by" data-testid="sort" on:change=set_sort>
                {option("name", "Name", initial_sort.name())}
                {option("status", "Status", initial_sort.name())}
                {option("last_seen", "Last seen", initial_sort.name())}
            </select>
            <span class="fleet-count" data-testid="fleet-count">
                {move || format!("{} of {} devices", shown.with(Vec::len), cards.with(Vec::len))}
            </span>
        </div>
        <ul class="cards" data-testid="devices" node_ref=list style=style>
            <For each=visible key=|card| card.id.get_value() let:card>
                <DeviceCard card now link/>
            </For>
        </ul>
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
                        sparkline: None,
                        label: None,
                        disabled: false,
                        secured: false,
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
                append_spark(s, r);
            }
        });
    }
}

/// Adds a live reading to the card's sparkline if it is of the charted
/// metric (or starts one), dropping points older than an hour.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn append_spark(s: &mut DeviceSummary, r: &crate::model::Reading) {
    let spark = s.sparkline.get_or_insert_with(|| Sparkline {
        metric: r.metric.clone(),
        points: Vec::new(),
    });
    if spark.metric != r.metric {
        return;
    }
    let at = spark.points.partition_point(|(t, _)| *t <= r.ts);
    spark.points.insert(at, (r.ts, r.value));
    let horizon = spark.points.last().map_or(0, |(t, _)| t - SPARKLINE_MS);
    let stale = spark.points.partition_point(|(t, _)| *t < horizon);
    let excess = spark.points.len().saturating_sub(600);
    spark.points.drain(..stale.max(excess));
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
        <p class="counters-note" data-testid="counters-note">"Counted since the server (each server, in a cluster) last started."</p>
    }
}

#[component]
fn DeviceCard(card: Card, now: RwSignal<i64>, link: RwSignal<LinkState>) -> impl IntoView {
    let summary = card.summary;
    let id = card.id.get_value();
    let href = format!("/devices/{id}");
    let online = move || summary.with(format::is_online);
    view! {
        <li class="card" data-device=id.clone()>
            <a href=href class="card-link">
                <span class="card-head">
                    <span class=move || dot_class(link, online())
                        data-testid="presence" role="img"
                        aria-label=move || status_text(link, summary)
                        title=move || status_text(link, summary)></span>
                    <span class="device-id">{id.clone()}</span>
                    {move || summary.with(|s| s.label.clone()).map(|label| view! {
                        <bdi class="device-label" data-testid="device-label">{label}</bdi>
                    })}
                </span>
                <span class="metrics">
                    {move || {
                        let latest = summary.with(|s| s.latest.clone());
                        let more = latest.len().saturating_sub(CARD_METRICS);
                        let shown = latest
                            .into_iter()
                            .take(CARD_METRICS)
                            .map(|l| {
                                let value = format::value(l.value);
                                let title = value.clone();
                                view! {
                                    <span class="metric" data-metric=l.metric.clone()>
                                        <span class="metric-name" title=l.metric.clone()>{l.metric.clone()}</span>
                                        <span class="metric-value" title=title>{value}</span>
                                    </span>
                                }
                            })
                            .collect_view();
                        view! {
                            {shown}
                            {(more > 0).then(|| view! {
                                <span class="metric-more" data-testid="more-metrics">{format!("+{more} more")}</span>
                            })}
                        }
                    }}
                </span>
                {move || summary.with(|s| s.sparkline.clone()).map(|spark| {
                    let points = sparkline_points(&spark.points, now.get());
                    view! {
                        <svg class="spark" viewBox="0 0 100 24" preserveAspectRatio="none" data-testid="sparkline"
                            data-metric=spark.metric.clone() role="img" aria-label=format!("{} over the last hour", spark.metric)>
                            <polyline points=points fill="none" stroke="currentColor" stroke-width="1.5" vector-effect="non-scaling-stroke"></polyline>
                        </svg>
                    }
                })}
                <span class="card-foot">
                    "last seen "
                    <span data-testid="last-seen">{move || last_seen(summary, now)}</span>
                    {move || {
                        let n = summary.with(|s| s.rejected);
                        (n > 0).then(|| view! { <span class="rejected">{format!(" · {n} rejected")}</span> })
                    }}
                </span>
            </a>
        </li>
    }
}

/// While the page has lost its server, no status it shows is current.
fn unknown(link: RwSignal<LinkState>) -> bool {
    link.get() == LinkState::Reconnecting
}

/// The status dot's classes: a filled dot online, a ring offline, a
/// dashed ring when the page cannot know.
pub(super) fn dot_class(link: RwSignal<LinkState>, online: bool) -> &'static str {
    match (unknown(link), online) {
        (true, _) => "dot unknown",
        (false, true) => "dot on",
        (false, false) => "dot off",
    }
}

/// The device's status in words, or "status unknown" while the page has
/// lost its server.
pub(super) fn status_text(link: RwSignal<LinkState>, summary: RwSignal<DeviceSummary>) -> String {
    if unknown(link) {
        "status unknown — reconnecting to the server".to_owned()
    } else {
        summary.with(format::status)
    }
}

/// "5 s ago", or "never" for a device never heard of.
pub(super) fn last_seen(summary: RwSignal<DeviceSummary>, now: RwSignal<i64>) -> String {
    summary.with(|s| {
        if format::never_heard(s) {
            "never".to_owned()
        } else {
            format::ago(format::last_seen(s, now.get()), now.get())
        }
    })
}

/// Scales a sparkline's points over the hour before `now` into a 100 × 24
/// box, as an SVG `points` attribute.
fn sparkline_points(points: &[(EpochMs, f64)], now: EpochMs) -> String {
    let start = now - SPARKLINE_MS;
    let points: Vec<(f64, f64)> = points
        .iter()
        .filter(|(t, _)| *t >= start)
        .map(|(t, v)| {
            (
                ((t - start) as f64 / SPARKLINE_MS as f64).clamp(0.0, 1.0),
                *v,
            )
        })
        .collect();
    crate::chart::polyline(&points, 100.0, 24.0, 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_span_the_last_hour() {
        let now = 10 * SPARKLINE_MS;
        let points = [
            (now - 2 * SPARKLINE_MS, 9.0),
            (now - SPARKLINE_MS, 1.0),
            (now, 3.0),
        ];
        assert_eq!(sparkline_points(&points, now), "0.0,22.0 100.0,2.0");
        assert_eq!(sparkline_points(&[], now), "");
    }
}
