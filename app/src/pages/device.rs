//! The device page at `/devices/<id>`: one live line chart per metric,
//! backfilled with the last 15 minutes and then appended from the WebSocket.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use super::debounced_reload;
use super::fleet::CountersBar;
use super::LiveBadge;
use crate::api::{get_device, MAX_SERIES_POINTS, RECENT_WINDOW_MS};
use crate::chart::LiveChart;
use crate::format;
use crate::live::LinkState;
use crate::model::{DeviceDetail, DeviceSummary, EpochMs, Reading};

#[component]
pub fn DevicePage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").unwrap_or_default();
    let detail = Resource::new(id, get_device);
    // The live link's state and the lag notice live here, outside the
    // reloadable view, so a reload does not wipe the notice it explains.
    let link = RwSignal::new(LinkState::Connecting);
    let skipped = RwSignal::new(0u64);
    let reload = debounced_reload(move || detail.refetch());
    view! {
        <Title text=move || format!("{} · Sightline", id())/>
        <Transition fallback=|| view! { <p class="loading">"Loading device…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(Some(d)) => view! { <DeviceView detail=d reload link skipped/> }.into_any(),
                    Ok(None) => {
                        view! {
                            <p class="empty" data-testid="unknown-device">
                                "This device has not reported yet. "
                                <a href="/">"Back to the fleet"</a>
                            </p>
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="error">{format!("Could not load device: {e}")}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// The chart data of one metric.
#[derive(Clone, Copy)]
struct Series {
    metric: StoredValue<String>,
    points: RwSignal<Vec<(EpochMs, f64)>>,
}

#[component]
fn DeviceView(
    detail: DeviceDetail,
    reload: Callback<()>,
    link: RwSignal<LinkState>,
    skipped: RwSignal<u64>,
) -> impl IntoView {
    let id = detail.summary.id.clone();
    let now = RwSignal::new(detail.generated_at);
    let summary = RwSignal::new(detail.summary);
    let counters = RwSignal::new(detail.counters);
    let series = RwSignal::new(
        detail
            .series
            .into_iter()
            .map(|s| Series {
                metric: StoredValue::new(s.metric),
                points: RwSignal::new(s.points),
            })
            .collect::<Vec<_>>(),
    );

    #[cfg(not(feature = "hydrate"))]
    let _ = reload;
    #[cfg(feature = "hydrate")]
    {
        let id = id.clone();
        Effect::new(move |_| {
            use crate::live::{connect, LiveEvent};
            use crate::model::{ClientMsg, ServerMsg};
            super::follow_clock(now);
            let device = id.clone();
            let subscription = ClientMsg::Subscribe {
                devices: vec![id.clone()],
            };
            connect(&subscription, link, move |event| match event {
                LiveEvent::Message(ServerMsg::Readings { readings }) => {
                    let mine: Vec<&Reading> =
                        readings.iter().filter(|r| r.device == device).collect();
                    if !mine.is_empty() {
                        apply_readings(series, summary, &mine, js_sys::Date::now() as i64);
                    }
                }
                LiveEvent::Message(ServerMsg::Stats {
                    counters: c,
                    rejected,
                }) => {
                    counters.set(c);
                    if let Some((_, n)) = rejected.iter().find(|(d, _)| *d == device) {
                        summary.update(|s| s.rejected = *n);
                    }
                }
                LiveEvent::Message(ServerMsg::Lagged { skipped: n }) => {
                    skipped.update(|s| *s += n);
                    reload.run(());
                }
                LiveEvent::Message(ServerMsg::Presence { devices }) => {
                    if let Some(change) = devices.into_iter().rev().find(|p| p.device == device) {
                        summary.update(|s| s.presence = Some(change));
                    }
                }
                LiveEvent::Opened { reconnect } => {
                    if reconnect {
                        reload.run(());
                    }
                }
            });
        });
    }

    let online = move || summary.with(format::is_online);
    let since = move || summary.with(|s| s.presence.as_ref().and_then(|p| p.connected_since));
    view! {
        <section class="page-head">
            <a href="/" class="back" aria-label="Back to the fleet">"←"</a>
            <h1 data-testid="device-id">{id}</h1>
            <span class=move || if online() { "dot on" } else { "dot off" }></span>
            <LiveBadge state=link skipped/>
        </section>
        <p class="device-meta">
            <span data-testid="presence">{move || summary.with(format::status)}</span>
            {move || since().map(|t| view! {
                " · connected "
                <span data-testid="connected-since">{move || format::ago(t, now.get())}</span>
            })}
            " · last seen "
            <span data-testid="last-seen">{move || format::ago(summary.with(|s| format::last_seen(s, now.get())), now.get())}</span>
            " · "
            <span data-testid="device-rejected">{move || summary.with(|s| s.rejected)}</span>
            " rejected"
        </p>
        <CountersBar counters/>
        <div class="panels">
            <For each=move || series.get() key=|s| s.metric.get_value() let:s>
                <MetricPanel series=s summary now/>
            </For>
        </div>
    }
}

#[component]
fn MetricPanel(
    series: Series,
    summary: RwSignal<DeviceSummary>,
    now: RwSignal<i64>,
) -> impl IntoView {
    let metric = series.metric.get_value();
    let latest = {
        let metric = metric.clone();
        move || {
            summary.with(|s| {
                s.latest
                    .iter()
                    .find(|l| l.metric == metric)
                    .map_or_else(|| "–".to_owned(), |l| format::value(l.value))
            })
        }
    };
    let label = metric.clone();
    let attr = metric.clone();
    view! {
        <section class="panel" data-metric=attr>
            <header class="panel-head">
                <h2>{label}</h2>
                <span class="latest" data-testid="latest">{latest}</span>
            </header>
            <LiveChart metric points=series.points now window_ms=RECENT_WINDOW_MS/>
        </section>
    }
}

/// Appends live readings to the charts and the latest values, dropping
/// points that have scrolled out of the window.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn apply_readings(
    series: RwSignal<Vec<Series>>,
    summary: RwSignal<DeviceSummary>,
    readings: &[&Reading],
    now: EpochMs,
) {
    let horizon = now - RECENT_WINDOW_MS;
    for r in readings {
        let existing = series.with_untracked(|all| {
            all.iter()
                .find(|s| s.metric.with_value(|m| *m == r.metric))
                .copied()
        });
        let target = existing.unwrap_or_else(|| {
            let s = Series {
                metric: StoredValue::new(r.metric.clone()),
                points: RwSignal::new(Vec::new()),
            };
            series.update(|all| {
                all.push(s);
                all.sort_by(|a, b| a.metric.with_value(|x| b.metric.with_value(|y| x.cmp(y))));
            });
            s
        });
        target.points.update(|points| {
            // Devices may send their own, slightly out-of-order timestamps.
            let at = points.partition_point(|(ts, _)| *ts <= r.ts);
            points.insert(at, (r.ts, r.value));
            let stale = points.partition_point(|(ts, _)| *ts < horizon);
            let excess = points.len().saturating_sub(MAX_SERIES_POINTS);
            points.drain(..stale.max(excess));
        });
    }
    summary.update(|s| {
        for r in readings {
            s.apply(r);
        }
    });
}
