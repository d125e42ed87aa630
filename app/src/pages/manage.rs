//! Device management for operators: a device's label, enabling and
//! disabling it, a new secret, and deleting it; and the panel that shows a
//! new secret once, with copy buttons and ready-made `mosquitto_pub` lines
//! for this server.

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;

use crate::api::{DeleteDevice, RotateSecret, SetEnabled, SetLabel};
use crate::model::{DeviceCredentials, DeviceSummary};

/// A button that copies `text` to the clipboard and says so.
#[component]
pub fn CopyButton(text: String, #[prop(into)] what: String) -> impl IntoView {
    let copied = RwSignal::new(false);
    let label = format!("Copy {what}");
    let copy = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let clipboard = window().navigator().clipboard();
            let _ = clipboard.write_text(&text);
            copied.set(true);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = &text;
    };
    view! {
        <button type="button" class="copy" aria-label=label on:click=copy>
            {move || if copied.get() { "Copied" } else { "Copy" }}
        </button>
    }
}

/// A reference for a panel that scrolls itself into view once it is on
/// the page, so that a secret shown once is not missed below the fold.
pub fn scrolled_into_view() -> NodeRef<leptos::html::Div> {
    let node = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        if let Some(el) = node.get() {
            el.scroll_into_view();
        }
    });
    node
}

/// A new secret, shown once: the id and secret with copy buttons, and the
/// lines that publish a first reading with it, plain and ThingsBoard
/// style, to this server's broker. It scrolls itself into view.
#[component]
pub fn SecretPanel(credentials: DeviceCredentials, #[prop(into)] what: String) -> impl IntoView {
    let DeviceCredentials {
        id,
        secret,
        mqtt_port,
        mqtt_tls,
    } = credentials;
    let host = {
        #[cfg(feature = "hydrate")]
        {
            window()
                .location()
                .hostname()
                .unwrap_or_else(|_| "localhost".into())
        }
        #[cfg(not(feature = "hydrate"))]
        {
            "localhost".to_owned()
        }
    };
    let port = mqtt_port.map_or_else(String::new, |p| format!(" -p {p}"));
    let tls = if mqtt_tls { " --cafile ca.pem" } else { "" };
    let plain = format!(
        "mosquitto_pub -h {host}{port}{tls} -u {id} -P {secret} -t sensor/{id} -m '{{\"temp\":22}}'"
    );
    let thingsboard = format!(
        "mosquitto_pub -h {host}{port}{tls} -u {secret} -t v1/devices/me/telemetry -m '{{\"temp\":22}}'"
    );
    let node = scrolled_into_view();
    view! {
        <div class="notice secret-panel" role="status" data-testid="new-device" node_ref=node>
            <p>"Device " <strong>{id.clone()}</strong> {format!(" {what}. Copy its secret now; it is not shown again.")}</p>
            <p class="secret-row">
                <code class="secret" data-testid="new-secret">{secret.clone()}</code>
                <CopyButton text=secret.clone() what="secret"/>
            </p>
            <p class="hint">"Send a first reading with its id and secret:"</p>
            <p class="command-line">
                <code data-testid="publish-plain">{plain.clone()}</code>
                <CopyButton text=plain what="command"/>
            </p>
            <p class="hint">"Or ThingsBoard style, with the secret as the access token:"</p>
            <p class="command-line">
                <code data-testid="publish-thingsboard">{thingsboard.clone()}</code>
                <CopyButton text=thingsboard what="ThingsBoard command"/>
            </p>
        </div>
    }
}

/// The device page's management panel (operators): label, enable or
/// disable, rotate the secret, delete.
#[component]
pub fn ManagePanel(id: String, summary: RwSignal<DeviceSummary>) -> impl IntoView {
    let label = ServerAction::<SetLabel>::new();
    let enabled = ServerAction::<SetEnabled>::new();
    let rotate = ServerAction::<RotateSecret>::new();
    let delete = ServerAction::<DeleteDevice>::new();
    let label_text = RwSignal::new(summary.with_untracked(|s| s.label.clone().unwrap_or_default()));
    let label_error = RwSignal::new(None::<String>);
    let state_error = RwSignal::new(None::<String>);
    let confirm_rotate = RwSignal::new(false);
    let typed = RwSignal::new(String::new());
    let keep_data = RwSignal::new(true);
    let delete_error = RwSignal::new(None::<String>);

    Effect::new(move |_| match label.value().get() {
        Some(Ok(())) => {
            label_error.set(None);
            let text = label_text.get_untracked();
            let clean = crate::model::clean_label(&text).ok().flatten();
            summary.update(|s| s.label = clean);
        }
        Some(Err(e)) => label_error.set(Some(super::error_message(e))),
        None => {}
    });
    Effect::new(move |_| match enabled.value().get() {
        Some(Ok(())) => {
            state_error.set(None);
            summary.update(|s| s.disabled = !s.disabled);
        }
        Some(Err(e)) => state_error.set(Some(super::error_message(e))),
        None => {}
    });
    Effect::new(move |_| {
        if let Some(Ok(_)) = rotate.value().get() {
            confirm_rotate.set(false);
            summary.update(|s| s.secured = true);
        }
    });
    let navigate = use_navigate();
    Effect::new(move |_| match delete.value().get() {
        Some(Ok(())) => navigate("/", Default::default()),
        Some(Err(e)) => delete_error.set(Some(super::error_message(e))),
        None => {}
    });

    let save_label = {
        let id = id.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            label.dispatch(SetLabel {
                id: id.clone(),
                label: label_text.get_untracked(),
            });
        }
    };
    let toggle = {
        let id = id.clone();
        move |_| {
            enabled.dispatch(SetEnabled {
                id: id.clone(),
                enabled: summary.with_untracked(|s| s.disabled),
            });
        }
    };
    let do_rotate = {
        let id = id.clone();
        move |_| {
            rotate.dispatch(RotateSecret { id: id.clone() });
        }
    };
    let matches = {
        let id = id.clone();
        move || typed.with(|t| t.trim() == id)
    };
    let do_delete = {
        let id = id.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            delete.dispatch(DeleteDevice {
                id: id.clone(),
                confirm: typed.get_untracked(),
                keep_data: keep_data.get_untracked(),
            });
        }
    };
    let rotate_warning = move || {
        if summary.with(|s| s.secured) {
            "The device's current secret stops working at its next login; until it has the new one, the broker refuses it."
        } else {
            "The device connects without a secret now. From its next login it must use the new secret, or the broker refuses it."
        }
    };
    let disabled = move || summary.with(|s| s.disabled);
    let id_for_prompt = id.clone();

    view! {
        <section class="manage" aria-labelledby="manage-title" data-testid="manage">
            <h2 id="manage-title">"Manage device"</h2>
            <form class="manage-row" on:submit=save_label>
                <label class="field" for="device-label-input">"Label"</label>
                <input id="device-label-input" type="text" maxlength="200" autocomplete="off"
                    data-testid="label-input" aria-describedby="label-error"
                    prop:value=move || label_text.get()
                    on:input=move |ev| label_text.set(event_target_value(&ev))/>
                <button type="submit" data-testid="label-save">"Save label"</button>
                <p id="label-error" class="error field-error" aria-live="polite" data-testid="label-error">
                    {move || label_error.get()}
                </p>
            </form>
            <div class="manage-row">
                <span data-testid="enabled-state">
                    {move || if disabled() { "Disabled: the broker refuses this device." } else { "Enabled: the device may connect." }}
                </span>
                <button type="button" data-testid="toggle-enabled" on:click=toggle>
                    {move || if disabled() { "Enable" } else { "Disable" }}
                </button>
                <p class="error field-error" aria-live="polite">{move || state_error.get()}</p>
            </div>
            <div class="manage-row">
                <Show
                    when=move || confirm_rotate.get()
                    fallback=move || view! {
                        <button type="button" data-testid="rotate" on:click=move |_| confirm_rotate.set(true)>"Rotate secret…"</button>
                    }
                >
                    <p class="warning" role="alert">{rotate_warning}</p>
                    <button type="button" class="danger" data-testid="rotate-confirm" on:click=do_rotate.clone()>"Make a new secret"</button>
                    <button type="button" on:click=move |_| confirm_rotate.set(false)>"Cancel"</button>
                </Show>
            </div>
            {move || match rotate.value().get() {
                Some(Ok(c)) => view! { <SecretPanel credentials=c what="has a new secret"/> }.into_any(),
                Some(Err(e)) => view! { <p class="error" role="alert">{super::error_message(e)}</p> }.into_any(),
                None => ().into_any(),
            }}
            <details class="manage-delete">
                <summary data-testid="delete-open">"Delete device…"</summary>
                <form on:submit=do_delete>
                    <fieldset>
                        <legend>"Its readings"</legend>
                        <label class="check">
                            <input type="radio" name="keep" data-testid="delete-keep" prop:checked=move || keep_data.get()
                                on:change=move |_| keep_data.set(true)/>
                            "Keep them: the device leaves the fleet and the broker; its history can still be exported, and adding the id again brings it back."
                        </label>
                        <label class="check">
                            <input type="radio" name="keep" data-testid="delete-all" prop:checked=move || !keep_data.get()
                                on:change=move |_| keep_data.set(false)/>
                            "Delete them too. This cannot be undone."
                        </label>
                    </fieldset>
                    <label class="field" for="delete-confirm">{format!("Type {id_for_prompt} to confirm")}</label>
                    <input id="delete-confirm" type="text" autocomplete="off" data-testid="delete-confirm"
                        aria-describedby="delete-error"
                        prop:value=move || typed.get() on:input=move |ev| typed.set(event_target_value(&ev))/>
                    <button type="submit" class="danger" data-testid="delete-device" disabled=move || !matches()>"Delete device"</button>
                    <p id="delete-error" class="error field-error" aria-live="polite">{move || delete_error.get()}</p>
                </form>
            </details>
        </section>
    }
}
