//! The hydrated chart: an ECharts instance on the chart's box, redrawn at
//! most every few hundred milliseconds, with the mouse and touch handlers
//! that turn a drag or a pinch into a new window.

use leptos::prelude::*;

use super::ext;
use super::{option, Handlers, Line, REDRAW_EVERY_MS};
use crate::model::EpochMs;

#[allow(clippy::too_many_arguments)]
pub(super) fn mount_echarts(
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
    // How many lines the canvas last drew; see `ext::set_option`.
    let drawn = StoredValue::new(usize::MAX);

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
                let same_lines = drawn.try_get_value() == Some(data.len());
                ext::set_option(ec, &value, !same_lines);
                drawn.try_set_value(data.len());
            }
        });
    };

    Effect::new(move |_| {
        // The page's window outlives this chart: while a transition keeps
        // a replaced chart on screen, a change of window still reaches it
        // after its own values are gone, and it then does nothing.
        window.track();
        let alive = lines.try_with_value(|lines| {
            lines.iter().for_each(|l| {
                let _ = l.buckets.try_with(|_| ());
            })
        });
        // A chart built inside a pending transition is not in the document
        // yet (ECharts needs it there to measure it), so look again shortly.
        if alive.is_none() || retry.try_get().is_none() {
            return;
        }
        if !node.try_get().flatten().is_some_and(|el| el.is_connected()) {
            set_timeout(
                move || {
                    let _ = retry.try_update(|n| *n += 1);
                },
                Duration::from_millis(30),
            );
            return;
        }
        if instance.try_with_value(Option::is_none).unwrap_or(false) {
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
