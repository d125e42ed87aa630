//! ECharts methods that charming does not bind, and what uses them.

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

/// Draws `option`. With `replace`, the whole option is replaced, so series
/// that went away go away; otherwise it is merged into the chart's, which
/// keeps an open tooltip open while live readings redraw the lines.
pub fn set_option(ec: &charming::Echarts, option: &JsValue, replace: bool) {
    ext(ec).set_option_not_merge(option, replace);
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
pub fn on_datazoom(ec: &charming::Echarts, zoomed: impl Fn(i64, i64) + 'static) -> ZoomListener {
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
