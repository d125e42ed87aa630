//! The device page's command panel: send a command (a name, JSON params,
//! whether to wait for an answer, whether to wait for an offline device),
//! and follow the device's recent commands live, with a re-send button on
//! each.

use leptos::prelude::*;

use crate::api::{get_commands, SendCommand};
use crate::format;
use crate::model::{Command, CommandState, EpochMs};

/// Commands kept in the panel's list.
const LIST_LEN: usize = 20;

/// Names the name field suggests; any valid name may be typed.
const SUGGESTED: [(&str, &str); 2] = [("ping", ""), ("set_interval", "{\"ms\": 250}")];

/// How far a command has come: finished beats delivered beats a later
/// send. Messages about one command can arrive out of order (the send's
/// reply after a live update), and the list must never step back.
fn progress(c: &Command) -> (bool, bool, EpochMs) {
    (
        c.is_final(),
        c.delivered_at.is_some(),
        c.sent_at.unwrap_or(0),
    )
}

/// Puts `c` into `list` (newest first), replacing the same command unless
/// `c` is older news.
pub fn upsert(list: &mut Vec<Command>, c: Command) {
    if let Some(old) = list.iter_mut().find(|o| o.id == c.id) {
        if progress(&c) >= progress(old) {
            *old = c;
        }
        return;
    }
    // Ids are time-ordered, so they break ties of the same millisecond.
    let at = list.partition_point(|o| (o.created_at, &o.id) > (c.created_at, &c.id));
    list.insert(at, c);
    list.truncate(LIST_LEN);
}

#[component]
pub fn CommandPanel(
    device: String,
    commands: RwSignal<Vec<Command>>,
    now: RwSignal<EpochMs>,
) -> impl IntoView {
    let loaded = Resource::new(
        {
            let device = device.clone();
            move || device.clone()
        },
        get_commands,
    );
    let send = ServerAction::<SendCommand>::new();
    let result = send.value();
    let name = RwSignal::new("ping".to_owned());
    let params = RwSignal::new(String::new());
    let two_way = RwSignal::new(true);
    let persistent = RwSignal::new(false);
    let problem = RwSignal::new(None::<String>);

    Effect::new(move |_| match result.get() {
        Some(Ok(c)) => {
            problem.set(None);
            commands.update(|list| upsert(list, c));
        }
        Some(Err(e)) => problem.set(Some(super::error_message(e))),
        None => {}
    });

    let dispatch = {
        let device = device.clone();
        move |c: SendCommand| {
            // The server checks the params, so that a refusal is counted
            // wherever it comes from; its reason is shown below the form.
            problem.set(None);
            send.dispatch(SendCommand {
                id: device.clone(),
                ..c
            });
        }
    };
    let submit = {
        let dispatch = dispatch.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            dispatch(SendCommand {
                id: String::new(),
                name: name.get_untracked(),
                params: params.get_untracked(),
                two_way: two_way.get_untracked(),
                persistent: persistent.get_untracked(),
            });
        }
    };
    // The example that fits the command being typed: none for `ping`.
    let placeholder = move || {
        name.with(|n| match SUGGESTED.iter().find(|(s, _)| *s == n.trim()) {
            Some((_, "")) => "no params".to_owned(),
            Some((_, example)) => (*example).to_owned(),
            None => "{\"key\": \"value\"}".to_owned(),
        })
    };
    let suggestions = SUGGESTED
        .iter()
        .map(|(n, _)| view! { <option value=*n></option> })
        .collect_view();
    let on_name = move |ev: leptos::ev::Event| {
        let typed = event_target_value(&ev);
        // Picking a built-in command fills in an example of its params.
        if let Some((_, example)) = SUGGESTED.iter().find(|(n, _)| *n == typed) {
            if params.get_untracked().trim().is_empty() {
                params.set((*example).to_owned());
            }
        }
        name.set(typed);
    };

    view! {
        <section class="commands" aria-labelledby="commands-title">
            <h2 id="commands-title">"Commands"</h2>
            <form class="command-form" on:submit=submit data-testid="command-form">
                <label class="field">
                    "Name"
                    <input type="text" list="command-names" required maxlength="64" autocomplete="off"
                        data-testid="command-name" prop:value=move || name.get() on:input=on_name/>
                    <datalist id="command-names">{suggestions}</datalist>
                </label>
                <label class="field wide">
                    "Params (JSON)"
                    <textarea rows="2" spellcheck="false" placeholder=placeholder data-testid="command-params"
                        prop:value=move || params.get()
                        on:input=move |ev| params.set(event_target_value(&ev))></textarea>
                </label>
                <label class="check">
                    <input type="checkbox" data-testid="command-two-way" prop:checked=move || two_way.get()
                        on:change=move |ev| two_way.set(event_target_checked(&ev))/>
                    "Wait for an answer"
                </label>
                <label class="check">
                    <input type="checkbox" data-testid="command-persistent" prop:checked=move || persistent.get()
                        on:change=move |ev| persistent.set(event_target_checked(&ev))/>
                    "Wait if the device is offline"
                </label>
                <button type="submit" data-testid="command-send" disabled=move || send.pending().get()>"Send"</button>
            </form>
            {move || problem.get().map(|p| view! { <p class="error" role="alert" data-testid="command-error">{p}</p> })}
            // The list renders inside the Suspense, after the stored
            // commands are merged in, so the server's HTML and the hydrated
            // page start from the same list.
            <Suspense fallback=|| view! { <p class="loading">"Loading commands…"</p> }>
                {move || {
                    let dispatch = dispatch.clone();
                    Suspend::new(async move {
                        match loaded.await {
                            Ok(list) => {
                                // Live changes may have arrived first; they are newer.
                                commands.update(|mine| list.into_iter().rev().for_each(|c| upsert(mine, c)));
                                view! { <CommandList commands now dispatch=Callback::new(move |c: SendCommand| dispatch(c))/> }.into_any()
                            }
                            Err(e) => view! { <p class="error">{format!("Could not load commands: {e}")}</p> }.into_any(),
                        }
                    })
                }}
            </Suspense>
        </section>
    }
}

/// The recent commands, newest first.
#[component]
fn CommandList(
    commands: RwSignal<Vec<Command>>,
    now: RwSignal<EpochMs>,
    dispatch: Callback<SendCommand>,
) -> impl IntoView {
    view! {
        <ol class="command-list" data-testid="command-list">
            {move || {
                let list = commands.get();
                if list.is_empty() {
                    return view! { <li class="empty">"No commands sent yet."</li> }.into_any();
                }
                list.into_iter()
                    .map(|c| view! { <CommandRow c now resend=dispatch/> })
                    .collect_view()
                    .into_any()
            }}
        </ol>
    }
}

/// One command in the list: what was asked, where it is, how long each
/// step took, and what came back.
#[component]
fn CommandRow(c: Command, now: RwSignal<EpochMs>, resend: Callback<SendCommand>) -> impl IntoView {
    let state = c.state.label();
    let params = shorten(&c.params.to_string(), 160);
    let outcome = match (&c.response, &c.error) {
        (Some(r), _) => Some(format!("→ {}", shorten(&r.to_string(), 240))),
        (None, Some(e)) => Some(shorten(e, 240)),
        _ => None,
    };
    let steps = steps(&c);
    let created = c.created_at;
    let again = SendCommand {
        id: String::new(),
        name: c.name.clone(),
        params: c.params.to_string(),
        two_way: c.two_way,
        persistent: c.persistent,
    };
    let kind = match (c.two_way, c.persistent) {
        (true, true) => "two-way, persistent",
        (true, false) => "two-way",
        (false, true) => "one-way, persistent",
        (false, false) => "one-way",
    };
    view! {
        <li class="command" data-testid="command" data-id=c.id.clone() data-state=state>
            <div class="command-head">
                <code class="command-name">{c.name.clone()}</code>
                <span class=format!("state state-{state}") data-testid="command-state">{state}</span>
                <span class="command-age">{move || format::ago(created, now.get())}</span>
            </div>
            <code class="command-params">{params}</code>
            <p class="command-steps">{kind}{steps}</p>
            {outcome.map(|o| {
                let failed = matches!(c.state, CommandState::Failed | CommandState::Expired);
                view! { <p class="command-outcome" class:error=failed data-testid="command-outcome">{o}</p> }
            })}
            <button type="button" class="resend" data-testid="command-resend"
                on:click=move |_| resend.run(again.clone())>"Re-send"</button>
        </li>
    }
}

/// " · sent +3 ms · delivered +20 ms · answered +45 ms", each from the
/// moment the command was accepted.
fn steps(c: &Command) -> String {
    let mut out = String::new();
    let mut step = |what: &str, at: Option<EpochMs>| {
        if let Some(at) = at {
            out.push_str(&format!(" · {what} +{} ms", at - c.created_at));
        }
    };
    step("sent", c.sent_at);
    step("delivered", c.delivered_at);
    if c.is_final() && c.state != CommandState::Delivered {
        step(c.state.label(), c.completed_at);
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str, created_at: EpochMs, state: CommandState) -> Command {
        Command {
            id: id.into(),
            device: "D".into(),
            name: "ping".into(),
            params: serde_json::json!({}),
            two_way: true,
            persistent: false,
            timeout_ms: 30_000,
            ttl_ms: 1000,
            state,
            created_at,
            sent_at: Some(created_at + 1),
            delivered_at: None,
            completed_at: None,
            response: None,
            error: None,
        }
    }

    #[test]
    fn the_list_keeps_the_newest_first_and_never_goes_backwards() {
        let mut list = Vec::new();
        upsert(&mut list, command("a", 1, CommandState::Sent));
        upsert(&mut list, command("b", 2, CommandState::Sent));
        assert_eq!(list[0].id, "b");
        upsert(&mut list, command("a", 1, CommandState::Answered));
        assert_eq!(list[1].state, CommandState::Answered);
        // A late "sent" from the action's reply does not undo "answered".
        upsert(&mut list, command("a", 1, CommandState::Sent));
        assert_eq!(list[1].state, CommandState::Answered);
        // Nor does it undo "delivered".
        let mut delivered = command("b", 2, CommandState::Delivered);
        delivered.delivered_at = Some(5);
        upsert(&mut list, delivered);
        upsert(&mut list, command("b", 2, CommandState::Sent));
        assert_eq!(list[0].state, CommandState::Delivered);
        for i in 0..30 {
            upsert(
                &mut list,
                command(&format!("n{i}"), 10 + i, CommandState::Queued),
            );
        }
        assert_eq!(list.len(), LIST_LEN);
        assert_eq!(list[0].id, "n29");
    }

    #[test]
    fn steps_are_timed_from_acceptance() {
        let mut c = command("a", 1000, CommandState::Answered);
        c.delivered_at = Some(1020);
        c.completed_at = Some(1045);
        assert_eq!(
            steps(&c),
            " · sent +1 ms · delivered +20 ms · answered +45 ms"
        );
    }
}
