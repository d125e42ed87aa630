//! The device page's desired-state panel: the configuration the device is
//! sent retained on `command/<id>/desired`, which version it acknowledged
//! last, and, for operators, a form that changes or removes it.

use leptos::prelude::*;

use crate::api::SetDesired;
use crate::format;
use crate::model::{DesiredState, EpochMs, Role};

/// How often the page asks whether the device has acknowledged a new
/// state, and for how many times after each change or page load: a device
/// subscribed at QoS 0 never acknowledges, and an open page must not ask
/// forever.
#[cfg(feature = "hydrate")]
const ACK_POLL: std::time::Duration = std::time::Duration::from_secs(3);
#[cfg(feature = "hydrate")]
const ACK_POLLS: u32 = 100;

/// The state as the operator reads and edits it.
fn pretty(state: &DesiredState) -> String {
    serde_json::to_string_pretty(&state.payload).unwrap_or_else(|_| state.payload.to_string())
}

/// Who set the state and whether the device has it, in words.
fn status(d: &DesiredState, now: EpochMs) -> String {
    let set = format!(
        "Version {}, set by {} {}.",
        d.version,
        d.set_by,
        format::ago(d.set_at, now)
    );
    let acked = match (d.acked_version, d.acked_at) {
        (Some(v), Some(at)) if v == d.version => {
            format!("Acknowledged by the device {}.", format::ago(at, now))
        }
        (Some(v), Some(at)) => format!(
            "Not acknowledged yet; the device acknowledged version {v} {}.",
            format::ago(at, now)
        ),
        _ => "Not acknowledged yet. The device acknowledges it when it subscribes at QoS 1."
            .to_owned(),
    };
    format!("{set} {acked}")
}

#[component]
pub fn DesiredPanel(
    device: String,
    initial: Option<DesiredState>,
    now: RwSignal<EpochMs>,
) -> impl IntoView {
    let topic = format!("command/{device}/desired");
    let text = RwSignal::new(initial.as_ref().map(pretty).unwrap_or_default());
    let desired = RwSignal::new(initial);
    let set = ServerAction::<SetDesired>::new();
    let problem = RwSignal::new(None::<String>);
    // Polls left before the page stops asking about acknowledgement.
    #[cfg(feature = "hydrate")]
    let polls = RwSignal::new(ACK_POLLS);

    Effect::new(move |_| match set.value().get() {
        Some(Ok(state)) => {
            problem.set(None);
            text.set(state.as_ref().map(pretty).unwrap_or_default());
            desired.set(state);
            #[cfg(feature = "hydrate")]
            polls.set(ACK_POLLS);
        }
        Some(Err(e)) => problem.set(Some(super::error_message(e))),
        None => {}
    });

    #[cfg(feature = "hydrate")]
    {
        let device = device.clone();
        let tick = set_interval_with_handle(
            move || {
                let waiting = desired
                    .try_with_untracked(|d| d.as_ref().is_some_and(|d| !d.is_acknowledged()))
                    .unwrap_or(false);
                let left = polls.try_get_untracked().unwrap_or(0);
                if !waiting || left == 0 {
                    return;
                }
                polls.set(left - 1);
                let device = device.clone();
                leptos::task::spawn_local(async move {
                    if let Ok(fresh) = crate::api::get_desired(device).await {
                        // A change made meanwhile is newer than this answer.
                        let newer = desired
                            .try_with_untracked(|d| {
                                d.as_ref().map(|d| d.version) <= fresh.as_ref().map(|f| f.version)
                            })
                            .unwrap_or(false);
                        if newer {
                            let _ = desired.try_set(fresh);
                        }
                    }
                });
            },
            ACK_POLL,
        );
        on_cleanup(move || {
            if let Ok(tick) = tick {
                tick.clear();
            }
        });
    }

    let submit = {
        let device = device.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            problem.set(None);
            set.dispatch(SetDesired {
                id: device.clone(),
                json: text.get_untracked(),
            });
        }
    };

    view! {
        <section class="desired" aria-labelledby="desired-title" data-testid="desired">
            <h2 id="desired-title">"Desired state"</h2>
            <p class="hint">"Sent retained on " <code>{topic}</code>
                ": a device that subscribes gets it at once, and again whenever it changes."</p>
            {move || match desired.get() {
                None => view! {
                    <p class="empty" data-testid="desired-none">"No desired state set."</p>
                }.into_any(),
                Some(d) => {
                    let status = move || desired.with(|d| d.as_ref().map(|d| status(d, now.get())));
                    let title = format!("set {}", format::utc_second(d.set_at));
                    view! {
                        <pre class="desired-payload" data-testid="desired-payload">{pretty(&d)}</pre>
                        <p class="desired-status" data-testid="desired-status" title=title aria-live="polite">{status}</p>
                    }.into_any()
                }
            }}
            <super::WhenRole least=Role::Operator>
                <form class="command-form desired-form" on:submit=submit.clone() data-testid="desired-form">
                    <label class="field wide">
                        "New desired state (JSON; empty removes it)"
                        <textarea rows="4" spellcheck="false" placeholder="{\"interval_ms\": 1000}" data-testid="desired-input"
                            prop:value=move || text.get()
                            on:input=move |ev| text.set(event_target_value(&ev))></textarea>
                    </label>
                    <button type="submit" data-testid="desired-set" disabled=move || set.pending().get()>
                        {move || if text.with(|t| t.trim().is_empty()) { "Remove desired state" } else { "Set desired state" }}
                    </button>
                </form>
                {move || problem.get().map(|p| view! { <p class="error field-error" role="alert" data-testid="desired-error">{p}</p> })}
            </super::WhenRole>
        </section>
    }
}
