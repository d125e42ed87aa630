//! The device page at `/devices/<id>`: a time-range picker, one history
//! chart per metric (or all on one), the export of the current range, and
//! the command panel.
//!
//! The range lives in the URL (`?range=24h`, or `?from=…&to=…` after a zoom
//! or a custom pick), so a view can be shared and the back button undoes a
//! zoom. Live ranges (5 min, 15 min, 1 h) append readings from the
//! WebSocket as they arrive; longer ranges stay still.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_navigate, use_params_map, use_query_map};
use leptos_router::NavigateOptions;

use super::commands::CommandPanel;
use super::debounced_reload;
use super::fleet::CountersBar;
use super::LiveBadge;
use crate::api::{get_device, get_history, HistoryWindow, MAX_SERIES_POINTS};
use crate::chart::{HistoryChart, Line, COLOURS};
use crate::format;
use crate::live::LinkState;
use crate::model::{
    Bucket, Command, DeviceDetail, DeviceSummary, EpochMs, Reading, SeriesResponse,
};
use crate::range::{points_for_width, Range, PRESETS};

/// Buckets requested before the page knows its width (server rendering).
const DEFAULT_POINTS: usize = 1_000;

/// What the history request depends on.
#[derive(Clone, Debug, PartialEq)]
struct HistoryKey {
    id: String,
    range: Range,
    tz: String,
    points: usize,
}

#[component]
pub fn DevicePage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = Memo::new(move |_| params.read().get("id").unwrap_or_default());
    let range = Memo::new(move |_| {
        query.with(|q| {
            Range::from_query(
                q.get("range").as_deref(),
                q.get("from").as_deref(),
                q.get("to").as_deref(),
            )
        })
    });
    let combined = Memo::new(move |_| query.with(|q| q.get("view").as_deref() == Some("combined")));
    // The server renders in UTC at a default width; the browser then asks
    // again in its own time zone at its chart's width in pixels.
    let tz = RwSignal::new("UTC".to_owned());
    let points = RwSignal::new(DEFAULT_POINTS);
    let detail = Resource::new(move || id.get(), get_device);
    let history = Resource::new(
        move || HistoryKey {
            id: id.get(),
            range: range.get(),
            tz: tz.get(),
            points: points.get(),
        },
        |key| {
            let window = match key.range {
                Range::Custom { from, to } => HistoryWindow::Between { from, to },
                ref preset => HistoryWindow::Last {
                    span: preset.span().unwrap_or(86_400_000),
                },
            };
            get_history(key.id, window, key.points, key.tz)
        },
    );
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        tz.set(browser_zone());
        if let Some(width) = chart_width() {
            points.set(points_for_width(width));
        }
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = points_for_width;

    // The live link's state and the lag notice live here, outside the
    // reloadable view, so a reload does not wipe the notice it explains.
    let link = RwSignal::new(LinkState::Connecting);
    let skipped = RwSignal::new(0u64);
    let reload = debounced_reload(move || {
        detail.refetch();
        history.refetch();
    });
    view! {
        <Title text=move || format!("{} · Sightline", id.get())/>
        <Transition fallback=|| view! { <p class="loading">"Loading device…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(Some(d)) => view! { <DeviceView detail=d history range combined reload link skipped/> }.into_any(),
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

/// The browser's IANA time zone, such as `Europe/Berlin`.
#[cfg(feature = "hydrate")]
fn browser_zone() -> String {
    let options = js_sys::Intl::DateTimeFormat::new(&js_sys::Array::new(), &js_sys::Object::new())
        .resolved_options();
    js_sys::Reflect::get(&options, &"timeZone".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_else(|| "UTC".to_owned())
}

/// The width of a chart on the page, in CSS pixels: the server-rendered
/// chart box, or the page's main column before there is one.
#[cfg(feature = "hydrate")]
fn chart_width() -> Option<f64> {
    let doc = document();
    if let Some(chart) = doc.query_selector("[data-testid=chart]").ok().flatten() {
        return Some(f64::from(chart.client_width()));
    }
    let main = doc.query_selector("main").ok().flatten()?;
    Some(f64::from(main.client_width()) - 40.0)
}

/// The page's current charts: one line per metric, replaced whenever a new
/// history arrives, and appended to by live readings in live ranges.
type Lines = RwSignal<Vec<Line>>;

#[component]
fn DeviceView(
    detail: DeviceDetail,
    history: Resource<Result<Option<SeriesResponse>, ServerFnError>>,
    range: Memo<Range>,
    combined: Memo<bool>,
    reload: Callback<()>,
    link: RwSignal<LinkState>,
    skipped: RwSignal<u64>,
) -> impl IntoView {
    let id = detail.summary.id.clone();
    let now = RwSignal::new(detail.generated_at);
    let summary = RwSignal::new(detail.summary);
    let counters = RwSignal::new(detail.counters);
    let lines: Lines = RwSignal::new(Vec::new());
    let commands = RwSignal::new(Vec::<Command>::new());
    // The window of the history on screen, for the custom range form.
    let shown = RwSignal::new((0, 0));

    #[cfg(not(feature = "hydrate"))]
    let _ = reload;
    #[cfg(feature = "hydrate")]
    {
        let id = id.clone();
        Effect::new(move |_| {
            use super::commands::upsert;
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
                        summary.update(|s| mine.iter().for_each(|r| s.apply(r)));
                        if range.get_untracked().is_live() {
                            append_live(
                                lines,
                                &mine,
                                range.get_untracked(),
                                js_sys::Date::now() as i64,
                            );
                        }
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
                LiveEvent::Message(ServerMsg::Command { command }) => {
                    if command.device == device {
                        commands.update(|list| upsert(list, *command));
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
    let pending = RwSignal::new(false);
    let navigate = use_navigate();
    let go = {
        let id = id.clone();
        Callback::new(move |(r, combined): (Range, bool)| {
            let view = if combined { "&view=combined" } else { "" };
            navigate(
                &format!("/devices/{id}?{}{view}", r.to_query()),
                NavigateOptions {
                    scroll: false,
                    ..NavigateOptions::default()
                },
            );
        })
    };
    let on_zoom = Callback::new(move |(from, to): (EpochMs, EpochMs)| {
        go.run((Range::Custom { from, to }, combined.get_untracked()));
    });
    view! {
        <section class="page-head">
            <a href="/" class="back" aria-label="Back to the fleet">"←"</a>
            <h1 data-testid="device-id">{id.clone()}</h1>
            {move || summary.with(|s| s.label.clone()).map(|label| view! {
                <bdi class="device-label" data-testid="device-label">{label}</bdi>
            })}
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
        <RangePicker range combined go shown/>
        <div class="history" class:pending=move || pending.get()>
            <Transition
                set_pending=pending.write_only()
                fallback=|| view! { <div class="panels"><section class="panel"><div class="chart-box"><p class="chart-empty">"Loading history…"</p></div></section></div> }
            >
                {move || Suspend::new(async move {
                    match history.await {
                        Ok(Some(h)) => {
                            let new_lines = lines_of(&h);
                            lines.set(new_lines.clone());
                            shown.set((h.from, h.to));
                            // Live ranges slide with the clock; others show
                            // exactly the window that was loaded.
                            let fixed = (h.from, h.to);
                            let live = range.get_untracked();
                            let window = Signal::derive(move || {
                                if live.is_live() { live.window(now.get()) } else { fixed }
                            });
                            let export = format!(
                                "/api/devices/{}/export?from={}&to={}&format=csv",
                                h.device, h.from, h.to
                            );
                            view! {
                                <div class="chart-actions">
                                    <a class="button" data-testid="export" href=export download="">"Export CSV"</a>
                                    <RangeLabel window=fixed/>
                                </div>
                                <Charts lines=new_lines response=h summary window combined on_zoom/>
                            }.into_any()
                        }
                        Ok(None) => view! { <p class="empty">"No history for this device."</p> }.into_any(),
                        Err(e) => view! { <p class="error" role="alert">{format!("Could not load history: {e}")}</p> }.into_any(),
                    }
                })}
            </Transition>
        </div>
        <super::WhenRole least=crate::model::Role::Operator>
            <CommandPanel device=id.clone() commands now/>
        </super::WhenRole>
        <CountersBar counters/>
    }
}

/// The loaded window as text. The server renders it in UTC, since it does
/// not know the viewer's zone; once hydrated, the browser rewrites it in
/// local time with the zone's name, as the chart's axis is drawn.
#[component]
fn RangeLabel(window: (EpochMs, EpochMs)) -> impl IntoView {
    let (from, to) = window;
    let text = RwSignal::new(format!(
        "{} – {}",
        format::utc_minute(from),
        format::utc_minute(to)
    ));
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let local = |t: EpochMs| {
            js_sys::Date::new(&(t as f64).into())
                .to_locale_string("default", &local_format())
                .as_string()
                .unwrap_or_default()
        };
        text.set(format!(
            "{} – {} ({})",
            local(from),
            local(to),
            browser_zone()
        ));
    });
    view! { <span class="range-label" data-testid="range-label">{move || text.get()}</span> }
}

/// `{dateStyle: "medium", timeStyle: "short"}` for `toLocaleString`.
#[cfg(feature = "hydrate")]
fn local_format() -> wasm_bindgen::JsValue {
    let options = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&options, &"dateStyle".into(), &"medium".into());
    let _ = js_sys::Reflect::set(&options, &"timeStyle".into(), &"short".into());
    options.into()
}

fn lines_of(h: &SeriesResponse) -> Vec<Line> {
    h.series
        .iter()
        .enumerate()
        .map(|(i, s)| Line {
            metric: StoredValue::new(s.metric.clone()),
            buckets: RwSignal::new(s.buckets.clone()),
            colour: COLOURS[i % COLOURS.len()],
        })
        .collect()
}

/// The charts of one history answer: one panel per metric, or one panel
/// with every metric.
#[component]
fn Charts(
    lines: Vec<Line>,
    response: SeriesResponse,
    summary: RwSignal<DeviceSummary>,
    window: Signal<(EpochMs, EpochMs)>,
    combined: Memo<bool>,
    on_zoom: Callback<(EpochMs, EpochMs)>,
) -> impl IntoView {
    if lines.is_empty() {
        return view! { <p class="empty" data-testid="no-history">"No readings yet."</p> }
            .into_any();
    }
    let step = response.step_ms;
    let resolution = |i: usize| {
        response
            .series
            .get(i)
            .and_then(|s| serde_json::to_value(s.resolution).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    if combined.get_untracked() {
        let names = lines
            .iter()
            .map(|l| l.metric.get_value())
            .collect::<Vec<_>>()
            .join(", ");
        return view! {
            <div class="panels">
                <section class="panel wide" data-metric="all">
                    <header class="panel-head"><h2>{names}</h2></header>
                    <HistoryChart key="all".to_owned() lines window step_ms=step resolution=resolution(0) on_zoom/>
                </section>
            </div>
        }
        .into_any();
    }
    let panels = lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let metric = line.metric.get_value();
            let key = metric.clone();
            let label = metric.clone();
            let attr = metric.clone();
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
            view! {
                <section class="panel" data-metric=attr>
                    <header class="panel-head">
                        <h2><span class="swatch" style=format!("background:{}", line.colour)></span>{label}</h2>
                        <span class="latest" data-testid="latest">{latest}</span>
                    </header>
                    <HistoryChart key lines=vec![line] window step_ms=step resolution=resolution(i) on_zoom/>
                </section>
            }
        })
        .collect_view();
    view! { <div class="panels">{panels}</div> }.into_any()
}

/// The range buttons, the custom range form and the layout switch.
#[component]
fn RangePicker(
    range: Memo<Range>,
    combined: Memo<bool>,
    go: Callback<(Range, bool)>,
    shown: RwSignal<(EpochMs, EpochMs)>,
) -> impl IntoView {
    let custom_open = RwSignal::new(false);
    let from_input = NodeRef::<leptos::html::Input>::new();
    let to_input = NodeRef::<leptos::html::Input>::new();
    let buttons = PRESETS
        .iter()
        .map(|&(name, _, live)| {
            let selected = move || range.get() == Range::Preset(name);
            view! {
                <button type="button" class="range" class:live=live aria-pressed=move || selected().to_string()
                    data-testid=format!("range-{name}")
                    on:click=move |_| { custom_open.set(false); go.run((Range::Preset(name), combined.get_untracked())); }>
                    {name}
                </button>
            }
        })
        .collect_view();
    let apply = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        #[cfg(feature = "hydrate")]
        {
            let parse = |node: NodeRef<leptos::html::Input>| {
                let value = node.get()?.value();
                let t = js_sys::Date::new(&value.into()).get_time();
                t.is_finite().then_some(t as i64)
            };
            if let (Some(from), Some(to)) = (parse(from_input), parse(to_input)) {
                if from < to {
                    custom_open.set(false);
                    go.run((Range::Custom { from, to }, combined.get_untracked()));
                }
            }
        }
    };
    #[cfg(feature = "hydrate")]
    let local = |t: EpochMs| {
        // datetime-local wants the browser's wall clock, without a zone.
        let d = js_sys::Date::new(&(t as f64).into());
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}",
            d.get_full_year(),
            d.get_month() + 1,
            d.get_date(),
            d.get_hours(),
            d.get_minutes()
        )
    };
    #[cfg(not(feature = "hydrate"))]
    let local = |_: EpochMs| String::new();
    view! {
        <nav class="range-picker" aria-label="Time range">
            <div class="range-group" role="group">{buttons}
                <button type="button" class="range" data-testid="range-custom"
                    aria-pressed=move || matches!(range.get(), Range::Custom { .. }).to_string()
                    on:click=move |_| custom_open.update(|o| *o = !*o)>"Custom"</button>
            </div>
            <div class="range-group" role="group" aria-label="Layout">
                <button type="button" class="range" data-testid="layout-stacked" aria-pressed=move || (!combined.get()).to_string()
                    on:click=move |_| go.run((range.get_untracked(), false))>"Stacked"</button>
                <button type="button" class="range" data-testid="layout-combined" aria-pressed=move || combined.get().to_string()
                    on:click=move |_| go.run((range.get_untracked(), true))>"Combined"</button>
            </div>
        </nav>
        <Show when=move || custom_open.get()>
            <form class="custom-range" on:submit=apply data-testid="custom-form">
                <label>"From" <input type="datetime-local" node_ref=from_input required prop:value=move || local(shown.get_untracked().0)/></label>
                <label>"To" <input type="datetime-local" node_ref=to_input required prop:value=move || local(shown.get_untracked().1)/></label>
                <button type="submit" data-testid="custom-apply">"Show"</button>
            </form>
        </Show>
    }
}

/// Appends live readings to their metric's line, dropping what has slid
/// out of the live window, and adding a line for a new metric.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn append_live(lines: Lines, readings: &[&Reading], range: Range, now: EpochMs) {
    let horizon = range.window(now).0;
    for r in readings {
        // Lines from a history answer that has just been replaced may be
        // disposed already; they simply match nothing.
        let target = lines.with_untracked(|all| {
            all.iter()
                .find(|l| l.metric.try_with_value(|m| *m == r.metric).unwrap_or(false))
                .copied()
        });
        let Some(target) = target else {
            // A metric that appeared after the page loaded shows after the
            // next reload; live ranges reload on reconnect.
            continue;
        };
        let _ = target.buckets.try_update(|buckets| {
            let point = Bucket {
                start: r.ts,
                end: r.ts + 1,
                first: r.ts,
                last: r.ts,
                count: 1,
                min: r.value,
                max: r.value,
                avg: r.value,
            };
            // Devices may send their own, slightly out-of-order timestamps.
            let at = buckets.partition_point(|b| b.start <= r.ts);
            buckets.insert(at, point);
            let stale = buckets.partition_point(|b| b.end <= horizon);
            let excess = buckets.len().saturating_sub(MAX_SERIES_POINTS);
            buckets.drain(..stale.max(excess));
        });
    }
}
