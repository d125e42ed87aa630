//! The browser's side of the live WebSocket: it connects, subscribes,
//! reconnects with backoff, and reports its state to the page.
//!
//! On the server this module only provides [`LinkState`]; the connection
//! itself exists only in the hydrated page.

use crate::model::ServerMsg;

/// The state of the page's live connection, shown in the page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// The page has not connected yet (also what the server renders).
    Connecting,
    /// Subscribed and receiving updates.
    Live,
    /// The connection dropped; a new attempt is scheduled.
    Reconnecting,
}

impl LinkState {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connecting => "connecting…",
            Self::Live => "live",
            Self::Reconnecting => "reconnecting…",
        }
    }

    pub fn class(self) -> &'static str {
        match self {
            Self::Connecting => "link connecting",
            Self::Live => "link live",
            Self::Reconnecting => "link down",
        }
    }
}

/// What the live connection reports to the page.
#[derive(Debug)]
pub enum LiveEvent {
    /// The socket opened and the subscription was sent. After a reconnect
    /// the page should reload history to fill the gap.
    Opened {
        reconnect: bool,
    },
    Message(ServerMsg),
}

#[cfg(feature = "hydrate")]
pub use client::connect;

#[cfg(feature = "hydrate")]
mod client {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Duration;

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;
    use wasm_bindgen::prelude::Closure;
    use wasm_bindgen::{JsCast, JsValue};

    use super::{LinkState, LiveEvent};
    use crate::model::{ClientMsg, ServerMsg};

    type Handler = Closure<dyn FnMut(JsValue)>;

    /// One page's connection. It is shared by the socket's callbacks and by
    /// the reconnect timer, hence the `Rc` and interior mutability.
    struct Link {
        subscription: String,
        state: RwSignal<LinkState>,
        on_event: Box<dyn Fn(LiveEvent)>,
        socket: RefCell<Option<web_sys::WebSocket>>,
        /// The callbacks of the current socket; replacing them drops the old
        /// ones, so reconnects do not leak closures.
        handlers: RefCell<Vec<Handler>>,
        /// Set when the page goes away, so no reconnect is attempted.
        closed: Cell<bool>,
        attempts: Cell<u32>,
        opened_before: Cell<bool>,
    }

    /// Opens the live connection for the current page and keeps it open
    /// until the calling reactive owner is cleaned up. Call it from an
    /// `Effect`, which runs only in the browser.
    pub fn connect(
        subscription: &ClientMsg,
        state: RwSignal<LinkState>,
        on_event: impl Fn(LiveEvent) + 'static,
    ) {
        let Ok(subscription) = serde_json::to_string(subscription) else {
            return;
        };
        let link = Rc::new(Link {
            subscription,
            state,
            on_event: Box::new(on_event),
            socket: RefCell::new(None),
            handlers: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            attempts: Cell::new(0),
            opened_before: Cell::new(false),
        });
        open(&link);
        let link = SendWrapper::new(link);
        on_cleanup(move || {
            link.closed.set(true);
            if let Some(socket) = link.socket.borrow_mut().take() {
                // Detach the callbacks first: the browser fires `close`
                // after this returns, when the closures are already gone.
                detach(&socket);
                let _ = socket.close();
            }
            link.handlers.borrow_mut().clear();
        });
    }

    fn detach(socket: &web_sys::WebSocket) {
        socket.set_onopen(None);
        socket.set_onmessage(None);
        socket.set_onclose(None);
    }

    fn socket_url() -> Option<String> {
        let location = window().location();
        let scheme = if location.protocol().ok()? == "https:" {
            "wss"
        } else {
            "ws"
        };
        Some(format!("{scheme}://{}/ws", location.host().ok()?))
    }

    fn open(link: &Rc<Link>) {
        if link.closed.get() {
            return;
        }
        let Some(socket) = socket_url().and_then(|url| web_sys::WebSocket::new(&url).ok()) else {
            return retry(link);
        };

        let l = Rc::clone(link);
        let on_open: Handler = Closure::new(move |_: JsValue| {
            l.attempts.set(0);
            if let Some(s) = l.socket.borrow().as_ref() {
                let _ = s.send_with_str(&l.subscription);
            }
            l.state.set(LinkState::Live);
            let reconnect = l.opened_before.replace(true);
            (l.on_event)(LiveEvent::Opened { reconnect });
        });

        let l = Rc::clone(link);
        let on_message: Handler = Closure::new(move |event: JsValue| {
            let Ok(event) = event.dyn_into::<web_sys::MessageEvent>() else {
                return;
            };
            let Some(text) = event.data().as_string() else {
                return;
            };
            match serde_json::from_str::<ServerMsg>(&text) {
                Ok(msg) => (l.on_event)(LiveEvent::Message(msg)),
                Err(e) => leptos::logging::warn!("ignoring unreadable live message: {e}"),
            }
        });

        let l = Rc::clone(link);
        let on_close: Handler = Closure::new(move |_: JsValue| {
            if !l.closed.get() {
                l.state.set(LinkState::Reconnecting);
                retry(&l);
            }
        });

        if let Some(old) = link.socket.borrow_mut().take() {
            detach(&old);
        }
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *link.handlers.borrow_mut() = vec![on_open, on_message, on_close];
        *link.socket.borrow_mut() = Some(socket);
    }

    /// Schedules another attempt with exponential backoff, capped at 10 s, so
    /// a restarting server is found again quickly without being hammered.
    fn retry(link: &Rc<Link>) {
        let attempt = link.attempts.get().saturating_add(1);
        link.attempts.set(attempt);
        let delay = (250u64 << attempt.min(6)).min(10_000);
        let link = SendWrapper::new(Rc::clone(link));
        set_timeout(move || open(&link), Duration::from_millis(delay));
    }
}
