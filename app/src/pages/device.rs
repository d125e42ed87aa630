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
                let wanted = id.get_untracked();
                if !crate::model::valid_name(&wanted) {
                    super::set_status(400);
                    return view! {
                        <p class="empty" data-testid="invalid-device">
                            "“" {wanted} "” is not a device id: an id is 1 to 64 characters from A–Z a–z 0–9 _ - . and :. "
                            <a href="/">"Back to the fleet"</a>
                        </p>
                    }
                        .into_any();
                }
                match detail.await {
                    Ok(Some(d)) => view! { <DeviceView detail=d history range combined reload link skipped/> }.into_any(),
                    Ok(None) => {
                        super::set_status(404);
                        view! {
                            <p class="empty" data-testid="unknown-device">
                                "There is no device " <strong>{wanted}</strong>
                                ". It was never added and has never published, or it was deleted. "
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
    let refused = RwSignal::new(detail.refused);
    let desired = detail.desired;
    let desired_id = id.clone();
    // The lines of the history answer on screen, where live readings go,
    // with the owner that disposes them when the next answer replaces
    // them. Each answer has its own, so the charts of an answer being
    // replaced never see the next one's lines.
    let current = StoredValue::new(None::<(Lines, Option<Owner>)>);
    let commands = RwSignal::new(Vec::<Command>::new());
    // The window of the history on screen, for the custom range form.
    let shown = RwSignal::new((0, 0));
    // How live readings join the loaded history: as points of their own,
    // or folded into buckets of the history's step.
    let joining = StoredValue::new(Buckets::Points);
    // The newest time on a "last N days" chart: the end of its history,
    // pushed on by live readings, so they are on the axis.
    let extent = RwSignal::new(0);
    // Live ranges slide with the clock, "last N" ranges reach the newest
    // reading, and custom ranges show exactly what was asked for.
    let window = Signal::derive(move || match range.get() {
        r if r.is_live() => r.window(now.get()),
        Range::Custom { from, to } => (from, to),
        Range::Preset(_) => (shown.get().0, extent.get()),
    });

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
                        let range = range.get_untracked();
                        let now = js_sys::Date::now() as i64;
                        let (from, to) = match range {
                            Range::Custom { from, to } => (from, to),
                            ref r if r.is_live() => (r.window(now).0, EpochMs::MAX),
                            _ => (shown.get_untracked().0, EpochMs::MAX),
                        };
                        let newest = current.with_value(|c| {
                            let (lines, owner) = c.as_ref()?;
                            let add = |line: Line| {
                                // The new line lives as long as its answer.
                                let _ = lines.try_update(|all| all.push(line));
                            };
                            let made = |metric: &str, colour| {
                                let make = || Line {
                                    metric: StoredValue::new(metric.to_owned()),
                                    buckets: RwSignal::new(Vec::new()),
                                    colour,
                                };
                                owner.as_ref().map_or_else(make, |o| o.with(make))
                            };
                            join_live(*lines, &mine, (from, to), joining.get_value(), made, add)
                        });
                        if let Some(newest) = newest {
                            if newest > extent.get_untracked() {
                                extent.set(newest);
                            }
                        }
                    }
                }
                LiveEvent::Message(ServerMsg::Stats {
                    counters: c,
                    rejected,
                    refused: refusals,
                }) => {
                    counters.set(c);
                    if let Some((_, r)) = refusals.into_iter().find(|(d, _)| *d == device) {
                        if refused.with_untracked(|old| old.as_ref() != Some(&r)) {
                            refused.set(Some(r));
                        }
                    }
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
            <span class=move || super::fleet::dot_class(link, online()) aria-hidden="true"></span>
            <LiveBadge state=link skipped fixed=Signal::derive(move || matches!(range.get(), Range::Custom { .. }))/>
        </section>
        <p class="device-meta">
            <span data-testid="presence">{move || super::fleet::status_text(link, summary)}</span>
            {move || since().map(|t| view! {
                " · connected "
                <span data-testid="connected-since">{move || format::ago(t, now.get())}</span>
            })}
            " · last seen "
            <span data-testid="last-seen">{move || super::fleet::last_seen(summary, now)}</span>
            " · "
            <span data-testid="device-rejected">{move || summary.with(|s| s.rejected)}</span>
            " rejected since restart"
        </p>
        {move || {
            // A refusal matters until the device logs in again after it.
            let r = refused.get()?;
            let since = since().unwrap_or(0);
            (!online() || r.at > since).then(|| view! {
                <p class="notice" role="status" data-testid="device-refused">
                    "The broker refuses this device: " <strong>{r.why.clone()}</strong>
                    {format!(" ({} refusals since the server started, the last ", r.count)}
                    {move || format::ago(r.at, now.get())} ")."
                </p>
            })
        }}
        <RangePicker range combined go shown/>
        <div class="history" class:pending=move || pending.get()>
            <Transition
                set_pending=pending.write_only()
                fallback=|| view! { <div class="panels"><section class="panel"><div class="chart-box"><p class="chart-empty">"Loading history…"</p></div></section></div> }
            >
                {move || Suspend::new(async move {
                    match history.await {
                        Ok(Some(h)) => {
                            let lines: Lines = RwSignal::new(lines_of(&h));
                            current.set_value(Some((lines, Owner::current())));
                            shown.set((h.from, h.to));
                            extent.set(h.to);
                            joining.set_value(Buckets::of(&h, range.get_untracked().is_live()));
                            let device = h.device.clone();
                            let export = move || {
                                let (from, to) = window.get();
                                format!("/api/devices/{device}/export?from={from}&to={to}&format=csv")
                            };
                            let seconds = range.get_untracked().is_live();
                            view! {
                                <div class="chart-actions">
                                    <a class="button" data-testid="export" href=export download="">"Export CSV"</a>
                                    <RangeLabel window seconds/>
                                </div>
                                <Charts lines response=h summary window combined on_zoom/>
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
            <super::manage::ManagePanel id=id.clone() summary/>
        </super::WhenRole>
        <super::desired::DesiredPanel device=desired_id initial=desired now/>
        <CountersBar counters/>
    }
}

/// The window on screen as text, kept current as a live window slides.
/// The server renders it in UTC, since it does not know the viewer's zone;
/// once hydrated, the browser writes it in local time with the zone's
/// name, as the chart's axis is drawn, to the second for a live window.
#[component]
fn RangeLabel(window: Signal<(EpochMs, EpochMs)>, seconds: bool) -> impl IntoView {
    let hydrated = RwSignal::new(false);
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| hydrated.set(true));
    let text = move || {
        let (from, to) = window.get();
        // `window` outlives this label (see `Charts`), `hydrated` not.
        #[cfg(feature = "hydrate")]
        if hydrated.try_get().unwrap_or(false) {
            let local = |t: EpochMs| {
                js_sys::Date::new(&(t as f64).into())
                    .to_locale_string("default", &local_format(seconds))
                    .as_string()
                    .unwrap_or_default()
            };
            return format!("{} – {} ({})", local(from), local(to), browser_zone());
        }
        let _ = (hydrated, seconds);
        format!("{} – {}", format::utc_minute(from), format::utc_minute(to))
    };
    view! { <span class="range-label" data-testid="range-label">{text}</span> }
}

/// `{dateStyle: "medium", timeStyle: "short"}` for `toLocaleString`, or
/// `timeStyle: "medium"` (with seconds) when `seconds`.
#[cfg(feature = "hydrate")]
fn local_format(seconds: bool) -> wasm_bindgen::JsValue {
    let options = js_sys::Object::new();
    let time = if seconds { "medium" } else { "short" };
    let _ = js_sys::Reflect::set(&options, &"dateStyle".into(), &"medium".into());
    let _ = js_sys::Reflect::set(&options, &"timeStyle".into(), &time.into());
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

/// The charts of one history answer, with the metrics that appeared live
/// since: one panel per metric, or one panel with every metric. Both
/// follow `lines` and `combined`, so a new metric or the layout switch
/// shows at once.
#[component]
fn Charts(
    lines: Lines,
    response: SeriesResponse,
    summary: RwSignal<DeviceSummary>,
    window: Signal<(EpochMs, EpochMs)>,
    combined: Memo<bool>,
    on_zoom: Callback<(EpochMs, EpochMs)>,
) -> impl IntoView {
    let step = response.step_ms;
    // Where each loaded metric's buckets came from; a metric that appeared
    // live has its raw readings.
    let resolutions = StoredValue::new(
        response
            .series
            .iter()
            .map(|s| {
                let name = serde_json::to_value(s.resolution)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (s.metric.clone(), name)
            })
            .collect::<Vec<_>>(),
    );
    let resolution = move |metric: &str| {
        resolutions
            .try_with_value(|all| {
                all.iter()
                    .find(|(m, _)| m == metric)
                    .map(|(_, r)| r.clone())
            })
            .flatten()
            .unwrap_or_else(|| "raw".to_owned())
    };
    let empty = Memo::new(move |_| lines.with(Vec::is_empty));
    let panel = move |line: Line| {
        // Lines of a history answer that has just been replaced are
        // disposed while the old charts are still on screen.
        let metric = line.metric.try_get_value().unwrap_or_default();
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
            <section class="panel" data-metric=metric.clone()>
                <header class="panel-head">
                    <h2><span class="swatch" style=format!("background:{}", line.colour)></span>{metric.clone()}</h2>
                    <span class="latest" data-testid="latest">{latest}</span>
                </header>
                <HistoryChart key=metric.clone() lines=vec![line] window step_ms=step resolution=resolution(&metric) on_zoom/>
            </section>
        }
    };
    // `combined` outlives these charts: while a transition keeps replaced
    // charts on screen, the switch still reaches them after their own
    // values are gone, and they then show nothing new.
    move || {
        let Some(empty) = empty.try_get() else {
            return ().into_any();
        };
        if empty {
            return view! { <p class="empty" data-testid="no-history">"No readings yet."</p> }
                .into_any();
        }
        if combined.get() {
            return (move || {
                let all = lines.try_get().unwrap_or_default();
                let names = all
                    .iter()
                    .filter_map(|l| l.metric.try_get_value())
                    .collect::<Vec<_>>()
                    .join(", ");
                let first = names.split(", ").next().unwrap_or_default().to_owned();
                view! {
                    <div class="panels">
                        <section class="panel wide" data-metric="all">
                            <header class="panel-head"><h2>{names}</h2></header>
                            <HistoryChart key="all".to_owned() lines=all window step_ms=step resolution=resolution(&first) on_zoom/>
                        </section>
                    </div>
                }
            })
            .into_any();
        }
        view! {
            <div class="panels">
                <For each=move || lines.try_get().unwrap_or_default() key=|line| line.metric.try_get_value().unwrap_or_default() let:line>
                    {panel(line)}
                </For>
            </div>
        }
        .into_any()
    }
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
    let custom_error = RwSignal::new(None::<&'static str>);
    let from_input = NodeRef::<leptos::html::Input>::new();
    let to_input = NodeRef::<leptos::html::Input>::new();
    let buttons = PRESETS
        .iter()
        .map(|&(name, _, live)| {
            let selected = move || range.get() == Range::Preset(name);
            view! {
                <button type="button" class="range" class:live=live aria-pressed=move || selected().to_string()
                    data-testid=format!("range-{name}")
                    title=live.then_some("Follows live readings (the dot)")
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
            match (parse(from_input), parse(to_input)) {
                (Some(from), Some(to)) if from < to => {
                    custom_error.set(None);
                    custom_open.set(false);
                    go.run((Range::Custom { from, to }, combined.get_untracked()));
                }
                (Some(_), Some(_)) => custom_error.set(Some("“From” must be before “To”.")),
                _ => custom_error.set(Some("Enter both a start and an end.")),
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
                <span class="range-legend" aria-hidden="true"><span class="live-dot"></span>" live"</span>
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
                <p class="error field-error" role="alert" data-testid="custom-error">{move || custom_error.get()}</p>
            </form>
        </Show>
    }
}

/// How live readings join a loaded history.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Buckets {
    /// Each reading is a point of its own, as in a raw history.
    Points,
    /// Readings fold into buckets of this many milliseconds, as the
    /// history's were aggregated.
    Step(i64),
}

impl Buckets {
    /// How readings join `h`: as points where its first metric is raw (or,
    /// with no metric yet, on a live range), else into its step.
    fn of(h: &SeriesResponse, live: bool) -> Self {
        let raw = h
            .series
            .first()
            .map_or(live, |s| s.resolution == crate::model::Resolution::Raw);
        if raw || h.step_ms <= 1 {
            Self::Points
        } else {
            Self::Step(h.step_ms)
        }
    }
}

/// Adds live readings inside `[from, to]` to their metric's line, making
/// a line with `make(metric, colour)` and adding it with `add` for a
/// metric seen for the first time, and drops what has slid out before
/// `from`. Returns the newest reading's time, if any joined.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn join_live(
    lines: Lines,
    readings: &[&Reading],
    (from, to): (EpochMs, EpochMs),
    joining: Buckets,
    make: impl Fn(&str, &'static str) -> Line,
    add: impl Fn(Line),
) -> Option<EpochMs> {
    let mut newest = None;
    for r in readings.iter().filter(|r| (from..=to).contains(&r.ts)) {
        // The lines of an answer that has just been replaced are disposed;
        // they take nothing more.
        let Some(target) = lines.try_with_untracked(|all| {
            all.iter()
                .find(|l| l.metric.try_with_value(|m| *m == r.metric).unwrap_or(false))
                .copied()
        }) else {
            return newest;
        };
        let target = target.unwrap_or_else(|| {
            let count = lines.try_with_untracked(Vec::len).unwrap_or(0);
            let line = make(&r.metric, COLOURS[count % COLOURS.len()]);
            add(line);
            line
        });
        let _ = target.buckets.try_update(|buckets| {
            join(buckets, r, joining);
            let stale = buckets.partition_point(|b| b.end <= from);
            let excess = buckets.len().saturating_sub(MAX_SERIES_POINTS);
            buckets.drain(..stale.max(excess));
        });
        newest = newest.max(Some(r.ts));
    }
    newest
}

/// Adds one reading to a line's buckets, which stay in time order.
fn join(buckets: &mut Vec<Bucket>, r: &Reading, joining: Buckets) {
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
    let Buckets::Step(step) = joining else {
        // Devices may send their own, slightly out-of-order timestamps.
        let at = buckets.partition_point(|b| b.start <= r.ts);
        buckets.insert(at, point);
        return;
    };
    let at = buckets.partition_point(|b| b.end <= r.ts);
    match buckets.get_mut(at).filter(|b| b.start <= r.ts) {
        Some(b) => {
            b.avg += (r.value - b.avg) / (b.count + 1) as f64;
            b.count += 1;
            b.min = b.min.min(r.value);
            b.max = b.max.max(r.value);
            b.first = b.first.min(r.ts);
            b.last = b.last.max(r.ts);
        }
        None => {
            // A new bucket on the grid of its neighbours (the reload that
            // follows has the time zone's exact boundaries).
            let anchor = buckets.get(at.saturating_sub(1)).map_or(r.ts, |b| b.start);
            let start = anchor + (r.ts - anchor).div_euclid(step) * step;
            let end = buckets
                .get(at)
                .map_or(start + step, |next| (start + step).min(next.start));
            buckets.insert(
                at,
                Bucket {
                    start,
                    end,
                    ..point
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts: EpochMs, value: f64) -> Reading {
        Reading {
            device: "d".into(),
            metric: "m".into(),
            ts,
            value,
        }
    }

    #[test]
    fn readings_fold_into_the_step_of_the_history() {
        let mut buckets = Vec::new();
        for (ts, v) in [(1_000, 1.0), (1_500, 3.0), (2_100, 5.0), (4_000, 7.0)] {
            join(&mut buckets, &reading(ts, v), Buckets::Step(1_000));
        }
        let shape: Vec<_> = buckets
            .iter()
            .map(|b| (b.start, b.end, b.count, b.avg))
            .collect();
        assert_eq!(
            shape,
            [
                (1_000, 2_000, 2, 2.0),
                (2_000, 3_000, 1, 5.0),
                (4_000, 5_000, 1, 7.0)
            ]
        );
        // A late reading lands in its own bucket, between the others.
        join(&mut buckets, &reading(3_200, 9.0), Buckets::Step(1_000));
        assert_eq!(buckets[2].start, 3_000);
        assert_eq!(buckets[2].max, 9.0);
    }

    #[test]
    fn raw_readings_stay_points_in_time_order() {
        let mut buckets = Vec::new();
        for ts in [5, 3, 9] {
            join(&mut buckets, &reading(ts, 0.0), Buckets::Points);
        }
        let times: Vec<_> = buckets.iter().map(|b| b.start).collect();
        assert_eq!(times, [3, 5, 9]);
    }
}
