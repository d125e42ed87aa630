//! The audit log: who signed in, changed a device or an account, or sent a
//! command, when, and from where. Admins read it on the admin page and at
//! `GET /api/audit`.

use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::accounts::NewAuditEvent;
use crate::store::Store;

/// The actions the log records, as stored.
pub mod action {
    pub const LOGIN: &str = "login";
    pub const LOGIN_FAILED: &str = "login_failed";
    pub const LOGOUT: &str = "logout";
    pub const ACCOUNT_ADD: &str = "account_add";
    pub const ACCOUNT_REMOVE: &str = "account_remove";
    pub const ACCOUNT_ROLE: &str = "account_role";
    pub const PASSWORD_CHANGE: &str = "password_change";
    pub const TOKEN_ADD: &str = "token_add";
    pub const TOKEN_REVOKE: &str = "token_revoke";
    pub const DEVICE_ADD: &str = "device_add";
    pub const DEVICE_ENABLE: &str = "device_enable";
    pub const DEVICE_DISABLE: &str = "device_disable";
    pub const DEVICE_LABEL: &str = "device_label";
    pub const DEVICE_ROTATE: &str = "device_rotate";
    pub const DEVICE_DELETE: &str = "device_delete";
    pub const COMMAND_SEND: &str = "command_send";
    pub const DESIRED_SET: &str = "desired_set";
    pub const DESIRED_CLEAR: &str = "desired_clear";
    pub const SERVICE_ADD: &str = "service_add";
    pub const SERVICE_REMOVE: &str = "service_remove";
}

/// Text from a request made safe to store and show in the log: at most
/// `max` characters, with control and direction-changing characters
/// replaced, so an attacker-chosen name cannot forge lines or reorder
/// what an admin reads.
pub fn plain(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if app::model::is_disguising(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Writes audit events. A failed write is logged and counted, and never
/// fails the action it describes: the action already happened.
#[derive(Clone, Debug)]
pub struct Audit {
    store: Store,
    metrics: Arc<Metrics>,
}

impl Audit {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// Records one event. Every text is cleaned with [`plain`] here, not by
    /// callers, since some of it is chosen by whoever made the request (a
    /// failed sign-in's name above all) and all of it is shown to admins.
    pub async fn record(
        &self,
        actor: &str,
        action: &'static str,
        target: Option<&str>,
        detail: Option<String>,
        ip: Option<IpAddr>,
    ) {
        let actor = plain(actor, 64);
        let target = target.map(|t| plain(t, 128));
        let detail = detail.map(|d| plain(&d, 512));
        tracing::info!(
            actor,
            action,
            target,
            detail,
            ip = ip.map(|i| i.to_string()),
            "audit"
        );
        let event = NewAuditEvent {
            at: now_ms(),
            actor: actor.clone(),
            action,
            target,
            detail,
            ip: ip.map(|i| i.to_string()),
        };
        if let Err(e) = self.store.append_audit(event).await {
            Metrics::add(&self.metrics.auth.audit_errors, 1);
            tracing::error!("cannot write audit event {action} by {actor}: {e}");
        }
    }

    /// Records a command `actor` sent to `device`, with its name, params
    /// and id, the same from the API, the dashboard and MQTT.
    pub async fn command_sent(
        &self,
        actor: &str,
        device: &str,
        c: &app::model::Command,
        ip: Option<IpAddr>,
    ) {
        let detail = format!("{} {} ({})", c.name, c.params, c.id);
        self.record(actor, action::COMMAND_SEND, Some(device), Some(detail), ip)
            .await;
    }

    /// Records a service account `actor` made, with its grants, the same
    /// from the API and the admin page.
    pub async fn service_added(
        &self,
        actor: &str,
        account: &app::model::ServiceAccount,
        ip: Option<IpAddr>,
    ) {
        let grants = crate::store::services::grants_text(account);
        self.record(
            actor,
            action::SERVICE_ADD,
            Some(&account.name),
            Some(grants),
            ip,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_text_cannot_forge_lines_or_reorder() {
        assert_eq!(
            super::plain("eve\nINFO admin login", 64),
            "eve\u{FFFD}INFO admin login"
        );
        assert_eq!(super::plain("a\u{202E}b", 64), "a\u{FFFD}b");
        assert_eq!(super::plain(&"x".repeat(100), 64).len(), 64);
        assert_eq!(super::plain("<script>", 64), "<script>");
    }
}
