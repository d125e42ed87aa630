//! A live line chart. The server renders a static SVG sketch of the data so
//! the page shows real values before the WASM loads; once hydrated, an
//! ECharts canvas (built with charming) takes over and follows new points.

use leptos::prelude::*;

use crate::model::EpochMs;

/// The sketch's coordinate space; it stretches to the box with CSS.
const SKETCH_W: f64 = 600.0;
const SKETCH_H: f64 = 200.0;

/// How often the canvas is redrawn at most. Points arriving in between are
/// drawn together, so a fast device cannot make the chart (or the browser)
/// spend all its time redrawing.
#[cfg(feature = "hydrate")]
const REDRAW_EVERY_MS: u64 = 250;

#[component]
pub fn LiveChart(
    metric: String,
    points: RwSignal<Vec<(EpochMs, f64)>>,
    now: RwSignal<EpochMs>,
    window_ms: i64,
) -> impl IntoView {
    let dom_id = format!("chart-{metric}");
    let ready = RwSignal::new(false);
    let sketch = points.with_untracked(|p| sketch_points(p));
    let empty = move || points.with(Vec::is_empty);

    #[cfg(feature = "hydrate")]
    mount_echarts(dom_id.clone(), metric, points, now, window_ms, ready);
    #[cfg(not(feature = "hydrate"))]
    let _ = (now, window_ms);

    view! {
        <div
            class="chart-box"
            class:ready=move || ready.get()
            data-testid="chart"
            data-points=move || points.with(Vec::len)
        >
            <svg class="sketch" viewBox=format!("0 0 {SKETCH_W} {SKETCH_H}") preserveAspectRatio="none" aria-hidden="true">
                <polyline points=sketch fill="none" stroke="currentColor" stroke-width="2" vector-effect="non-scaling-stroke"></polyline>
            </svg>
            <div class="chart" id=dom_id></div>
            <Show when=empty>
                <p class="chart-empty">"No readings in the last 15 minutes."</p>
            </Show>
        </div>
    }
}

/// Scales points into the sketch's box as an SVG `points` attribute.
fn sketch_points(points: &[(EpochMs, f64)]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let span_t = (last.0 - first.0).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    points
        .iter()
        .map(|(t, v)| {
            let x = (t - first.0) as f64 / span_t * SKETCH_W;
            let y = SKETCH_H - 10.0 - (v - lo) / span_v * (SKETCH_H - 20.0);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(feature = "hydrate")]
fn mount_echarts(
    dom_id: String,
    metric: String,
    points: RwSignal<Vec<(EpochMs, f64)>>,
    now: RwSignal<EpochMs>,
    window_ms: i64,
    ready: RwSignal<bool>,
) {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    use charming::WasmRenderer;
    use send_wrapper::SendWrapper;
    use wasm_bindgen::JsValue;

    let instance = StoredValue::new_local(None::<charming::Echarts>);
    let pending = SendWrapper::new(Rc::new(Cell::new(false)));

    // A redraw may be scheduled just before the page navigates away, so
    // every access tolerates signals that have been disposed.
    let draw = move || {
        let Some(chart) = points.try_with_untracked(|p| {
            build(
                &metric,
                p,
                now.try_get_untracked().unwrap_or_default(),
                window_ms,
            )
        }) else {
            return;
        };
        instance.try_update_value(|slot| match slot {
            Some(ec) => WasmRenderer::update(ec, &chart),
            None => {
                match WasmRenderer::new_opt(None, None)
                    .theme(theme())
                    .render(&dom_id, &chart)
                {
                    Ok(ec) => {
                        *slot = Some(ec);
                        ready.set(true);
                    }
                    Err(e) => leptos::logging::error!("chart {dom_id} failed: {e:?}"),
                }
            }
        });
    };

    Effect::new(move |first: Option<()>| {
        points.track();
        if first.is_none() {
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
        instance.update_value(|slot| {
            if let Some(ec) = slot.take() {
                ext::dispose(&ec);
            }
        });
    });
}

/// ECharts' own dark theme when the browser prefers dark colours.
#[cfg(feature = "hydrate")]
fn theme() -> charming::theme::Theme {
    let dark = window()
        .match_media("(prefers-color-scheme: dark)")
        .ok()
        .flatten()
        .is_some_and(|m| m.matches());
    if dark {
        charming::theme::Theme::Dark
    } else {
        charming::theme::Theme::Default
    }
}

/// Builds the ECharts option for one metric over the live window.
#[cfg(feature = "hydrate")]
fn build(metric: &str, points: &[(EpochMs, f64)], now: EpochMs, window_ms: i64) -> charming::Chart {
    use charming::component::{Axis, DataZoom, DataZoomType, Grid};
    use charming::datatype::{CompositeValue, DataPoint};
    use charming::element::{AxisType, Symbol, Tooltip, Trigger};
    use charming::series::Line;
    use charming::Chart;

    let end = points.last().map_or(now, |(t, _)| (*t).max(now));
    let data: Vec<DataPoint> = points
        .iter()
        .map(|&(t, v)| DataPoint::from(vec![CompositeValue::from(t), CompositeValue::from(v)]))
        .collect();
    Chart::new()
        .background_color("transparent")
        .tooltip(Tooltip::new().trigger(Trigger::Axis))
        .grid(
            Grid::new()
                .left(8)
                .right(16)
                .top(16)
                .bottom(8)
                .contain_label(true),
        )
        .x_axis(
            Axis::new()
                .type_(AxisType::Time)
                .min(end - window_ms)
                .max(end),
        )
        .y_axis(Axis::new().type_(AxisType::Value).scale(true))
        .data_zoom(DataZoom::new().type_(DataZoomType::Inside))
        .animation(false)
        .series(
            Line::new()
                .name(metric)
                .symbol(Symbol::Circle)
                .show_symbol(points.len() < 60)
                .data(data),
        )
}

/// ECharts methods that charming does not bind.
#[cfg(feature = "hydrate")]
mod ext {
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_name = echarts)]
        type EchartsExt;
        #[wasm_bindgen(method)]
        fn dispose(this: &EchartsExt);
    }

    /// Frees the chart's canvas and listeners when its component goes away.
    pub fn dispose(ec: &charming::Echarts) {
        ec.unchecked_ref::<EchartsExt>().dispose();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_spans_the_box() {
        assert_eq!(sketch_points(&[]), "");
        assert_eq!(
            sketch_points(&[(0, 1.0), (10, 3.0)]),
            "0.0,190.0 600.0,10.0"
        );
        assert_eq!(sketch_points(&[(5, 2.0)]), "0.0,190.0");
    }
}
