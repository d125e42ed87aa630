//! History charts: for each metric, a min/max band with the average line,
//! from the series API's buckets. The server renders a static SVG sketch of
//! the averages so the page shows real data before the WASM loads; once
//! hydrated, an ECharts canvas takes over.
//!
//! Zooming asks for a new window rather than magnifying what is loaded, so
//! a zoomed chart shows finer buckets: dragging across the chart with a
//! mouse selects a window, and the wheel or a pinch zooms around a point.
//! Either way the chart calls `on_zoom` with the new window.

use leptos::prelude::*;

use crate::model::{Bucket, EpochMs};

/// The sketch's coordinate space; it stretches to the box with CSS.
const SKETCH_W: f64 = 600.0;
const SKETCH_H: f64 = 200.0;

/// How often the canvas is redrawn at most while live readings arrive.
/// Points arriving in between are drawn together, so a fast device cannot
/// make the chart (or the browser) spend all its time redrawing.
#[cfg(feature = "hydrate")]
const REDRAW_EVERY_MS: u64 = 250;

/// Line colours, one per metric, readable on light and dark backgrounds.
pub const COLOURS: [&str; 6] = [
    "#0f9488", "#3b82f6", "#d97706", "#db2777", "#8b5cf6", "#16a34a",
];

/// One metric on a chart.
#[derive(Clone, Copy)]
pub struct Line {
    pub metric: StoredValue<String>,
    pub buckets: RwSignal<Vec<Bucket>>,
    pub colour: &'static str,
}

#[component]
pub fn HistoryChart(
    /// Unique on the page; used for the canvas element's id.
    key: String,
    lines: Vec<Line>,
    /// The x axis: the requested window, so an empty stretch shows as such.
    window: Signal<(EpochMs, EpochMs)>,
    /// The usual bucket length, for breaking the line across gaps.
    step_ms: i64,
    /// Where the buckets came from (`raw`, `rollup_1m`, ...), for tests and
    /// the curious.
    resolution: String,
    /// Called with a new window when the user zooms.
    on_zoom: Callback<(EpochMs, EpochMs)>,
) -> impl IntoView {
    let dom_id = format!("chart-{key}");
    let ready = RwSignal::new(false);
    let sketch = lines
        .first()
        .map(|l| l.buckets.with_untracked(|b| sketch_points(b)))
        .unwrap_or_default();
    let count = {
        let lines = lines.clone();
        move || {
            lines
                .iter()
                .map(|l| l.buckets.with(Vec::len))
                .sum::<usize>()
        }
    };
    let empty = {
        let count = count.clone();
        move || count() == 0
    };
    // The drag selection, in pixels from the chart's left edge.
    let selection = RwSignal::new(None::<(f64, f64)>);
    let node = NodeRef::<leptos::html::Div>::new();

    #[cfg(feature = "hydrate")]
    let handlers = mount_echarts(
        dom_id.clone(),
        node,
        lines,
        window,
        step_ms,
        ready,
        on_zoom,
        selection,
    );
    #[cfg(not(feature = "hydrate"))]
    let handlers = {
        let _ = (window, step_ms, on_zoom, lines, node);
        Handlers::default()
    };
    let Handlers {
        down,
        moved,
        up,
        cancel,
    } = handlers;

    view! {
        <div
            class="chart-box"
            class:ready=move || ready.get()
            data-testid="chart"
            data-points=count
            data-step=step_ms
            data-resolution=resolution
            on:pointerdown=move |e| down.run(e)
            on:pointermove=move |e| moved.run(e)
            on:pointerup=move |e| up.run(e)
            on:pointercancel=move |e| { selection.set(None); cancel.run(e) }
        >
            <svg class="sketch" viewBox=format!("0 0 {SKETCH_W} {SKETCH_H}") preserveAspectRatio="none" aria-hidden="true">
                <polyline points=sketch fill="none" stroke="currentColor" stroke-width="2" vector-effect="non-scaling-stroke"></polyline>
            </svg>
            <div class="chart" id=dom_id node_ref=node></div>
            {move || selection.get().map(|(a, b)| {
                let (left, width) = (a.min(b), (a - b).abs());
                view! { <div class="selection" style=format!("left:{left}px;width:{width}px")></div> }
            })}
            <Show when=empty>
                <p class="chart-empty">"No readings in this range."</p>
            </Show>
        </div>
    }
}

/// The chart box's pointer handlers; no-ops until hydrated.
#[derive(Clone, Copy)]
struct Handlers {
    down: Callback<leptos::ev::PointerEvent>,
    moved: Callback<leptos::ev::PointerEvent>,
    up: Callback<leptos::ev::PointerEvent>,
    cancel: Callback<leptos::ev::PointerEvent>,
}

impl Default for Handlers {
    fn default() -> Self {
        let nothing = Callback::new(|_: leptos::ev::PointerEvent| {});
        Self {
            down: nothing,
            moved: nothing,
            up: nothing,
            cancel: nothing,
        }
    }
}

/// Scales the buckets' averages into the sketch's box as an SVG `points`
/// attribute.
fn sketch_points(buckets: &[Bucket]) -> String {
    let (Some(first), Some(last)) = (buckets.first(), buckets.last()) else {
        return String::new();
    };
    let span_t = (last.start - first.start).max(1) as f64;
    let points: Vec<(f64, f64)> = buckets
        .iter()
        .map(|b| ((b.start - first.start) as f64 / span_t, b.avg))
        .collect();
    polyline(&points, SKETCH_W, SKETCH_H, 10.0)
}

/// An SVG `points` attribute for a `width` × `height` box: `x` runs from 0
/// to 1 across the box, and the values are scaled to fill its height less
/// `margin` at the top and bottom. Shared by the chart sketches and the
/// fleet's sparklines.
pub fn polyline(points: &[(f64, f64)], width: f64, height: f64, margin: f64) -> String {
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    points
        .iter()
        .map(|(x, v)| {
            let x = x * width;
            let y = height - margin - (v - lo) / span * (height - 2.0 * margin);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a bucket is drawn: its middle, or its time for a raw reading.
pub fn x_of(b: &Bucket) -> EpochMs {
    if b.end - b.start <= 1 {
        b.start
    } else {
        b.start + (b.end - b.start) / 2
    }
}

/// The ECharts option for `lines` over `window`, as JSON. Each metric is
/// three series: the minimum (invisible), the range above it stacked on
/// the minimum and filled (the band), and the average. Buckets further
/// apart than 2.5 steps get a gap (`null`) between them rather than a line
/// across a stretch with no data.
pub fn option(
    lines: &[(String, &'static str, Vec<Bucket>)],
    window: (EpochMs, EpochMs),
    step_ms: i64,
    dark: bool,
) -> serde_json::Value {
    // Wheel zoom is ECharts'; pinches are handled by the chart box (see
    // `mount_echarts`), so ECharts must not zoom on touch as well.
    use serde_json::{json, Value};
    let gap = step_ms.saturating_mul(5) / 2;
    let mut series = Vec::new();
    for (i, (metric, colour, buckets)) in lines.iter().enumerate() {
        let (mut lows, mut ranges, mut avgs) = (Vec::new(), Vec::new(), Vec::new());
        let mut previous: Option<EpochMs> = None;
        for b in buckets {
            let x = x_of(b);
            if previous.is_some_and(|p| x - p > gap.max(1)) {
                let hole = json!([x - 1, Value::Null]);
                lows.push(hole.clone());
                ranges.push(hole.clone());
                avgs.push(hole);
            }
            previous = Some(x);
            lows.push(json!([x, b.min]));
            ranges.push(json!([x, b.max - b.min]));
            avgs.push(json!([x, b.avg]));
        }
        let band = format!("band-{i}");
        let few = buckets.len() < 60;
        series.push(json!({
            "type": "line", "name": format!("{metric} min"), "stack": band,
            "stackStrategy": "all", "data": lows, "symbol": "none",
            "lineStyle": {"opacity": 0}, "silent": true, "z": 1,
        }));
        series.push(json!({
            "type": "line", "name": format!("{metric} range"), "stack": band,
            "stackStrategy": "all", "data": ranges, "symbol": "none",
            "lineStyle": {"opacity": 0}, "silent": true, "z": 1,
            "areaStyle": {"color": colour, "opacity": 0.22},
        }));
        series.push(json!({
            "type": "line", "name": metric, "data": avgs, "color": colour,
            "showSymbol": few, "symbolSize": 5, "lineStyle": {"width": 1.5}, "z": 3,
        }));
    }
    let names: Vec<&str> = lines.iter().map(|(m, _, _)| m.as_str()).collect();
    let text = if dark { "#c9ced8" } else { "#4b5260" };
    json!({
        "backgroundColor": "transparent",
        "animation": false,
        "textStyle": {"color": text},
        "grid": {"left": 8, "right": 16, "top": if names.len() > 1 { 30 } else { 12 }, "bottom": 8, "containLabel": true},
        "legend": {"show": names.len() > 1, "data": names, "top": 0, "textStyle": {"color": text}},
        "tooltip": {"trigger": "axis", "confine": true},
        "xAxis": {"type": "time", "min": window.0, "max": window.1, "axisLabel": {"hideOverlap": true, "color": text}},
        "yAxis": {"type": "value", "scale": true, "axisLabel": {"color": text},
                  "splitLine": {"lineStyle": {"color": if dark { "#2a2f3a" } else { "#e5e8ee" }}}},
        "dataZoom": [{
            "type": "inside", "start": 0, "end": 100, "zoomOnMouseWheel": true,
            "zoomLock": ext_coarse_pointer(),
            "moveOnMouseMove": false, "moveOnMouseWheel": false, "moveOnTouchMove": false,
            "preventDefaultMouseMove": false, "filterMode": "none",
        }],
        "series": series,
    })
}

#[cfg(feature = "hydrate")]
#[allow(clippy::too_many_arguments)]
fn mount_echarts(
    dom_id: String,
    node: NodeRef<leptos::html::Div>,
    lines: Vec<Line>,
    window: Signal<(EpochMs, EpochMs)>,
    step_ms: i64,
    ready: RwSignal<bool>,
    on_zoom: Callback<(EpochMs, EpochMs)>,
    selection: RwSignal<Option<(f64, f64)>>,
) -> Handlers {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    use charming::WasmRenderer;
    use send_wrapper::SendWrapper;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    let instance = StoredValue::new_local(None::<charming::Echarts>);
    let zoom_listener = StoredValue::new_local(None::<ext::ZoomListener>);
    let pending = SendWrapper::new(Rc::new(Cell::new(false)));
    let dark = ext::prefers_dark();
    let lines = StoredValue::new(lines);
    let retry = RwSignal::new(0u32);

    // A redraw may be scheduled just before the page navigates away, so
    // every access tolerates signals that have been disposed.
    let draw = move || {
        let Some(data) = lines.try_with_value(|lines| {
            lines
                .iter()
                .filter_map(|l| {
                    Some((
                        l.metric.try_get_value()?,
                        l.colour,
                        l.buckets.try_get_untracked()?,
                    ))
                })
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        let Some(window) = window.try_get_untracked() else {
            return;
        };
        let Ok(json) = serde_json::to_string(&option(&data, window, step_ms, dark)) else {
            return;
        };
        let Ok(value) = js_sys::JSON::parse(&json) else {
            return;
        };
        ext::set_tooltip_formatter(&value);
        instance.try_update_value(|slot| {
            if slot.is_none() {
                let theme = if dark {
                    charming::theme::Theme::Dark
                } else {
                    charming::theme::Theme::Default
                };
                match WasmRenderer::new_opt(None, None)
                    .theme(theme)
                    .render(&dom_id, &charming::Chart::new())
                {
                    Ok(ec) => {
                        let zoom = on_zoom;
                        let listener = ext::on_datazoom(&ec, move |from, to| {
                            // The page may have moved on since the gesture.
                            let _ = zoom.try_run((from, to));
                        });
                        zoom_listener.set_value(Some(listener));
                        *slot = Some(ec);
                        ready.set(true);
                    }
                    Err(e) => leptos::logging::error!("chart {dom_id} failed: {e:?}"),
                }
            }
            if let Some(ec) = slot {
                ext::set_option(ec, &value);
            }
        });
    };

    Effect::new(move |_| {
        lines.with_value(|lines| lines.iter().for_each(|l| l.buckets.track()));
        window.track();
        // A chart built inside a pending transition is not in the document
        // yet (ECharts needs it there to measure it), so look again shortly.
        retry.track();
        if !node.get().is_some_and(|el| el.is_connected()) {
            set_timeout(
                move || {
                    let _ = retry.try_update(|n| *n += 1);
                },
                Duration::from_millis(30),
            );
            return;
        }
        if instance.with_value(Option::is_none) {
            draw();
            return;
        }
        if !pending.replace(true) {
            let pending = pending.clone();
            let draw = draw.clone();
            set_timeout(
                move || {
                    pending.set(false);
                    draw();
                },
                Duration::from_millis(REDRAW_EVERY_MS),
            );
        }
    });

    Effect::new(move |_| {
        let resize = window_event_listener(leptos::ev::resize, move |_| {
            instance.with_value(|slot| {
                if let Some(ec) = slot {
                    ec.resize(JsValue::UNDEFINED);
                }
            });
        });
        on_cleanup(move || resize.remove());
    });

    on_cleanup(move || {
        instance.try_update_value(|slot| {
            if let Some(ec) = slot.take() {
                ext::dispose(&ec);
            }
        });
        // After the chart is gone: this cancels a pending zoom and frees
        // the handler the chart held.
        zoom_listener.try_update_value(|listener| listener.take());
    });

    // Drag-to-zoom with a mouse. Touch is left to ECharts (pinch) and to
    // the page (scrolling), so a finger on a chart never traps the page.
    let x_in_box = |e: &leptos::ev::PointerEvent| -> Option<f64> {
        let target = e.current_target()?.dyn_into::<web_sys::Element>().ok()?;
        Some(f64::from(e.client_x()) - target.get_bounding_client_rect().left())
    };
    // Two-finger pinch, tracked here rather than left to ECharts, whose
    // gesture recognition did not fire in Chromium's touch pipeline: each
    // finger's first and latest x, by pointer id.
    let fingers = StoredValue::new(Vec::<(i32, f64, f64)>::new());
    let down = Callback::new(move |e: leptos::ev::PointerEvent| {
        if e.pointer_type() == "touch" {
            if let Some(x) = x_in_box(&e) {
                fingers.update_value(|f| {
                    f.retain(|(id, _, _)| *id != e.pointer_id());
                    f.push((e.pointer_id(), x, x));
                });
            }
            return;
        }
        if e.pointer_type() != "mouse" || e.button() != 0 {
            return;
        }
        if let Some(x) = x_in_box(&e) {
            selection.set(Some((x, x)));
        }
    });
    let moved = Callback::new(move |e: leptos::ev::PointerEvent| {
        if e.pointer_type() == "touch" {
            if let Some(x) = x_in_box(&e) {
                fingers.update_value(|f| {
                    if let Some(finger) = f.iter_mut().find(|(id, _, _)| *id == e.pointer_id()) {
                        finger.2 = x;
                    }
                });
            }
            return;
        }
        if selection.with_untracked(Option::is_some) {
            if let Some(x) = x_in_box(&e) {
                selection.update(|s| {
                    if let Some((_, b)) = s {
                        *b = x;
                    }
                });
            }
        }
    });
    let up = Callback::new(move |e: leptos::ev::PointerEvent| {
        if e.pointer_type() == "touch" {
            let pinch = fingers.with_value(|f| match f.as_slice() {
                [a, b] => Some(((a.1 - b.1).abs(), (a.2 - b.2).abs(), (a.2 + b.2) / 2.0)),
                _ => None,
            });
            fingers.update_value(|f| f.clear());
            // Spreading the fingers by a fifth or more zooms in around
            // their midpoint by the same factor; pinching in zooms out.
            let Some((before, after, centre)) = pinch else {
                return;
            };
            if before < 10.0 || !(after / before > 1.2 || after / before < 0.8) {
                return;
            }
            let factor = after / before;
            let (from, to) = window.get_untracked();
            let zoomed = instance.with_value(|slot| {
                let at = ext::time_at(slot.as_ref()?, centre)? as f64;
                let from = at - (at - from as f64) / factor;
                let to = at + (to as f64 - at) / factor;
                Some((from as i64, to as i64))
            });
            if let Some((from, to)) = zoomed {
                if to > from {
                    on_zoom.run((from, to));
                }
            }
            return;
        }
        let Some((a, b)) = selection.get_untracked() else {
            return;
        };
        selection.set(None);
        // A click is not a zoom.
        if (a - b).abs() < 8.0 {
            return;
        }
        let picked = instance.with_value(|slot| {
            let ec = slot.as_ref()?;
            Some((ext::time_at(ec, a.min(b))?, ext::time_at(ec, a.max(b))?))
        });
        if let Some((from, to)) = picked {
            if to > from {
                on_zoom.run((from, to));
            }
        }
    });
    // The browser took the gesture over (a vertical scroll): no pinch.
    let cancel =
        Callback::new(move |_: leptos::ev::PointerEvent| fingers.update_value(|f| f.clear()));
    Handlers {
        down,
        moved,
        up,
        cancel,
    }
}

/// ECharts methods that charming does not bind, and what uses them.
#[cfg(feature = "hydrate")]
mod ext {
    use std::cell::RefCell;
    use std::rc::Rc;

    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_name = echarts)]
        type EchartsExt;
        #[wasm_bindgen(method)]
        fn dispose(this: &EchartsExt);
        #[wasm_bindgen(method, js_name = setOption)]
        fn set_option_not_merge(this: &EchartsExt, option: &JsValue, not_merge: bool);
        #[wasm_bindgen(method, js_name = getOption)]
        fn get_option(this: &EchartsExt) -> JsValue;
        #[wasm_bindgen(method)]
        fn on(this: &EchartsExt, event: &str, handler: &js_sys::Function);
        #[wasm_bindgen(method, js_name = convertFromPixel)]
        fn convert_from_pixel(this: &EchartsExt, finder: &JsValue, value: f64) -> JsValue;
    }

    fn ext(ec: &charming::Echarts) -> &EchartsExt {
        ec.unchecked_ref::<EchartsExt>()
    }

    /// Frees the chart's canvas and listeners when its component goes away.
    pub fn dispose(ec: &charming::Echarts) {
        ext(ec).dispose();
    }

    /// Replaces the whole option, so series that went away go away.
    pub fn set_option(ec: &charming::Echarts, option: &JsValue) {
        ext(ec).set_option_not_merge(option, true);
    }

    /// The time under pixel `x` of the chart.
    pub fn time_at(ec: &charming::Echarts, x: f64) -> Option<i64> {
        let finder = js_sys::Object::new();
        js_sys::Reflect::set(&finder, &"xAxisIndex".into(), &0.into()).ok()?;
        ext(ec)
            .convert_from_pixel(&finder, x)
            .as_f64()
            .map(|t| t as i64)
    }

    /// A chart's zoom handler and its pending debounce timer; dropping it
    /// cancels the timer and frees the handler.
    pub struct ZoomListener {
        _handler: Closure<dyn FnMut(JsValue)>,
        timer: Rc<RefCell<Option<i32>>>,
    }

    impl Drop for ZoomListener {
        fn drop(&mut self) {
            if let (Some(t), Some(w)) = (self.timer.borrow_mut().take(), web_sys::window()) {
                w.clear_timeout_with_handle(t);
            }
        }
    }

    /// Calls `zoomed(from, to)` when the wheel or a pinch has changed the
    /// visible window and then rested for a moment, so one gesture makes
    /// one request. The handler lives as long as the returned listener.
    pub fn on_datazoom(
        ec: &charming::Echarts,
        zoomed: impl Fn(i64, i64) + 'static,
    ) -> ZoomListener {
        let chart: EchartsExt = JsValue::from(ext(ec)).unchecked_into();
        let timer: Rc<RefCell<Option<i32>>> = Rc::default();
        let pending = timer.clone();
        let zoomed = Rc::new(zoomed);
        let handler = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            let timer = &pending;
            let Some(w) = web_sys::window() else {
                return;
            };
            if let Some(t) = timer.borrow_mut().take() {
                w.clear_timeout_with_handle(t);
            }
            let option = chart.get_option();
            let window = (|| {
                let zoom = js_sys::Reflect::get(&option, &"dataZoom".into()).ok()?;
                let first = js_sys::Reflect::get(&zoom, &0.into()).ok()?;
                let from = js_sys::Reflect::get(&first, &"startValue".into())
                    .ok()?
                    .as_f64()?;
                let to = js_sys::Reflect::get(&first, &"endValue".into())
                    .ok()?
                    .as_f64()?;
                Some((from as i64, to as i64))
            })();
            let Some((from, to)) = window else {
                return;
            };
            let zoomed = zoomed.clone();
            let fire = Closure::once_into_js(move || zoomed(from, to));
            *timer.borrow_mut() = w
                .set_timeout_with_callback_and_timeout_and_arguments_0(fire.unchecked_ref(), 400)
                .ok();
        });
        ext(ec).on("datazoom", handler.as_ref().unchecked_ref());
        ZoomListener {
            _handler: handler,
            timer,
        }
    }

    /// Shows each metric's average, minimum and maximum in the tooltip
    /// instead of ECharts' list of the three series behind it. The
    /// formatter is Rust, not script text, so the page needs no `eval`
    /// under its Content-Security-Policy; names are escaped, since ECharts
    /// inserts the result as HTML.
    pub fn set_tooltip_formatter(option: &JsValue) {
        let formatter =
            Closure::<dyn Fn(js_sys::Array) -> String>::new(|ps: js_sys::Array| tooltip_html(&ps))
                .into_js_value();
        if let Ok(tooltip) = js_sys::Reflect::get(option, &"tooltip".into()) {
            let _ = js_sys::Reflect::set(&tooltip, &"formatter".into(), &formatter);
        }
    }

    fn tooltip_html(ps: &js_sys::Array) -> String {
        let get =
            |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).unwrap_or(JsValue::UNDEFINED);
        let axis = get(&ps.get(0), "axisValue").as_f64().unwrap_or(0.0);
        let date = js_sys::Date::new(&JsValue::from_f64(axis));
        let time = get(&date, "toLocaleString")
            .dyn_into::<js_sys::Function>()
            .ok()
            .and_then(|f| f.call0(&date).ok())
            .and_then(|v| v.as_string())
            .unwrap_or_default();
        let mut out = vec![crate::format::escape_html(&time)];
        let mut low = std::collections::HashMap::<String, f64>::new();
        for p in ps.iter() {
            let name = get(&p, "seriesName").as_string().unwrap_or_default();
            let value = get(&p, "value");
            let Some(v) = js_sys::Array::is_array(&value)
                .then(|| js_sys::Array::from(&value).get(1).as_f64())
                .flatten()
            else {
                continue;
            };
            if let Some(metric) = name.strip_suffix(" min") {
                low.insert(metric.to_owned(), v);
                continue;
            }
            if let Some(metric) = name.strip_suffix(" range") {
                let base = low.get(metric).copied().unwrap_or(0.0);
                low.insert(format!("{metric} max"), base + v);
                continue;
            }
            // The marker is ECharts' own coloured dot.
            let marker = get(&p, "marker").as_string().unwrap_or_default();
            let mut line = format!("{marker}{}: {v:.2}", crate::format::escape_html(&name));
            if let (Some(lo), Some(hi)) = (low.get(&name), low.get(&format!("{name} max"))) {
                if lo != hi {
                    line.push_str(&format!(" ({lo:.2} … {hi:.2})"));
                }
            }
            out.push(line);
        }
        out.join("<br>")
    }

    /// Whether the browser prefers dark colours.
    pub fn prefers_dark() -> bool {
        web_sys::window()
            .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
            .is_some_and(|m| m.matches())
    }
}

/// Whether the device's main pointer is a finger, where ECharts' own zoom
/// is locked and the chart box's pinch handling zooms instead.
fn ext_coarse_pointer() -> bool {
    #[cfg(feature = "hydrate")]
    {
        web_sys::window()
            .and_then(|w| w.match_media("(pointer: coarse)").ok().flatten())
            .is_some_and(|m| m.matches())
    }
    #[cfg(not(feature = "hydrate"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start: i64, end: i64, min: f64, max: f64) -> Bucket {
        Bucket {
            start,
            end,
            first: start,
            last: end - 1,
            count: 2,
            min,
            max,
            avg: (min + max) / 2.0,
        }
    }

    #[test]
    fn sketch_spans_the_box() {
        assert_eq!(sketch_points(&[]), "");
        assert_eq!(
            sketch_points(&[bucket(0, 10, 1.0, 1.0), bucket(10, 20, 3.0, 3.0)]),
            "0.0,190.0 600.0,10.0"
        );
    }

    #[test]
    fn the_band_stacks_the_range_on_the_minimum_and_gaps_break_lines() {
        let buckets = vec![
            bucket(0, 100, -5.0, 1.0),
            bucket(100, 200, 0.0, 2.0),
            bucket(1_000, 1_100, 1.0, 1.0),
        ];
        let o = option(
            &[("temp".into(), COLOURS[0], buckets)],
            (0, 2_000),
            100,
            false,
        );
        let series = o["series"].as_array().expect("series");
        assert_eq!(series.len(), 3);
        assert_eq!(series[0]["stack"], series[1]["stack"]);
        assert_eq!(series[0]["data"][0], serde_json::json!([50, -5.0]));
        assert_eq!(series[1]["data"][0], serde_json::json!([50, 6.0]));
        // 150 -> 1050 is more than 2.5 steps: a null between them.
        assert_eq!(series[2]["data"].as_array().expect("data").len(), 4);
        assert!(series[2]["data"][2][1].is_null());
        assert_eq!(o["xAxis"]["min"], 0);
    }
}
