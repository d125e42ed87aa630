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

#[cfg(feature = "hydrate")]
mod ext;
#[cfg(feature = "hydrate")]
mod mount;
#[cfg(feature = "hydrate")]
use mount::mount_echarts;

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
                .map(|l| l.buckets.try_with(Vec::len).unwrap_or(0))
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
            "stackStrategy": "all", "data": lows, "symbol": "none", "yAxisIndex": i,
            "lineStyle": {"opacity": 0}, "silent": true, "z": 1,
        }));
        series.push(json!({
            "type": "line", "name": format!("{metric} range"), "stack": band,
            "stackStrategy": "all", "data": ranges, "symbol": "none", "yAxisIndex": i,
            "lineStyle": {"opacity": 0}, "silent": true, "z": 1,
            "areaStyle": {"color": colour, "opacity": 0.22},
        }));
        series.push(json!({
            "type": "line", "name": metric, "data": avgs, "color": colour, "yAxisIndex": i,
            "showSymbol": few, "symbolSize": 5, "lineStyle": {"width": 1.5}, "z": 3,
        }));
    }
    // Each metric has its own scale, so CO2 at 600 does not flatten
    // humidity at 45 on a combined chart: axes alternate left and right,
    // each further one set out by AXIS_PX, labelled in its line's colour.
    const AXIS_PX: usize = 48;
    let text = if dark { "#c9ced8" } else { "#4b5260" };
    let split = if dark { "#2a2f3a" } else { "#e5e8ee" };
    let many = lines.len() > 1;
    let y_axes: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, (_, colour, _))| {
            let label = if many { *colour } else { text };
            json!({
                "type": "value", "scale": true,
                "position": if i % 2 == 0 { "left" } else { "right" },
                "offset": (i / 2) * AXIS_PX,
                "axisLine": {"show": many, "lineStyle": {"color": colour}},
                "axisLabel": {"color": label},
                "splitLine": {"show": i == 0, "lineStyle": {"color": split}},
            })
        })
        .collect();
    let side = |first: usize| {
        8 + lines
            .len()
            .saturating_sub(first)
            .div_ceil(2)
            .saturating_sub(1)
            * AXIS_PX
    };
    let names: Vec<&str> = lines.iter().map(|(m, _, _)| m.as_str()).collect();
    json!({
        "backgroundColor": "transparent",
        "animation": false,
        "textStyle": {"color": text},
        "grid": {"left": side(0), "right": 16 + side(1).saturating_sub(8), "top": if names.len() > 1 { 30 } else { 12 }, "bottom": 8, "containLabel": true},
        "legend": {"show": names.len() > 1, "data": names, "top": 0, "textStyle": {"color": text}},
        "tooltip": {"trigger": "axis", "confine": true},
        "xAxis": {"type": "time", "min": window.0, "max": window.1, "axisLabel": {"hideOverlap": true, "color": text}},
        "yAxis": y_axes,
        "dataZoom": [{
            "type": "inside", "start": 0, "end": 100, "zoomOnMouseWheel": true,
            "zoomLock": ext_coarse_pointer(),
            "moveOnMouseMove": false, "moveOnMouseWheel": false, "moveOnTouchMove": false,
            "preventDefaultMouseMove": false, "filterMode": "none",
        }],
        "series": series,
    })
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

    #[test]
    fn each_metric_of_a_combined_chart_has_its_own_scale() {
        let one = || vec![bucket(0, 100, 1.0, 2.0)];
        let o = option(
            &[
                ("co2".into(), COLOURS[0], one()),
                ("hum".into(), COLOURS[1], one()),
                ("temp".into(), COLOURS[2], one()),
            ],
            (0, 1_000),
            100,
            false,
        );
        let axes = o["yAxis"].as_array().expect("axes");
        assert_eq!(axes.len(), 3);
        assert_eq!(axes[1]["position"], "right");
        assert_eq!(axes[2]["offset"], 48);
        let series = o["series"].as_array().expect("series");
        assert_eq!(series[5]["yAxisIndex"], 1);
        assert_eq!(series[8]["yAxisIndex"], 2);
    }
}
