//! Commands to devices on the wire: a request, and a command through its
//! life.

use serde::{Deserialize, Serialize};

use super::EpochMs;

/// Where a command is in its life. A command only ever moves forward:
/// `queued → sent → delivered → answered | failed | expired`, and the last
/// three (plus `delivered` for a one-way command) are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Stored, waiting for the device to subscribe to its commands.
    Queued,
    /// Handed to the broker for a device that is subscribed.
    Sent,
    /// The device acknowledged it (QoS 1 PUBACK), or, for a device that
    /// subscribed at QoS 0, it was written to the device's socket.
    Delivered,
    /// The device answered a two-way command with a result.
    Answered,
    /// The device answered with an error, or the command could not be sent
    /// (for example, a non-persistent command to an offline device).
    Failed,
    /// No delivery within the TTL, or no answer within the timeout.
    Expired,
}

impl CommandState {
    /// The word the dashboard and the CLI show.
    pub fn label(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    /// The inverse of [`Self::label`], for values read back from storage.
    pub fn from_label(label: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Sent,
            Self::Delivered,
            Self::Answered,
            Self::Failed,
            Self::Expired,
        ]
        .into_iter()
        .find(|s| s.label() == label)
    }
}

/// A command to a device and everything that has happened to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Command {
    pub id: String,
    pub device: String,
    pub name: String,
    pub params: serde_json::Value,
    /// Whether the device is expected to answer.
    pub two_way: bool,
    /// Whether the command waits (up to `ttl_ms`) for an offline device.
    pub persistent: bool,
    /// How long a sent command may wait for its answer (two-way) or its
    /// acknowledgement (one-way).
    pub timeout_ms: i64,
    /// How long a persistent command may wait to be sent.
    pub ttl_ms: i64,
    pub state: CommandState,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub created_at: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i64>))]
    pub sent_at: Option<EpochMs>,
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i64>))]
    pub delivered_at: Option<EpochMs>,
    /// When the command reached a final state.
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i64>))]
    pub completed_at: Option<EpochMs>,
    /// The device's result, for an answered command.
    pub response: Option<serde_json::Value>,
    /// Why the command failed or expired.
    pub error: Option<String>,
}

impl Command {
    /// Whether nothing more can happen to the command.
    pub fn is_final(&self) -> bool {
        match self.state {
            CommandState::Queued | CommandState::Sent => false,
            CommandState::Delivered => !self.two_way,
            CommandState::Answered | CommandState::Failed | CommandState::Expired => true,
        }
    }
}

/// The body of `POST /api/devices/{id}/commands`. Only `name` is required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct CommandRequest {
    pub name: String,
    #[serde(default = "empty_params")]
    pub params: serde_json::Value,
    /// Two-way commands wait for the device's answer; one-way ones are
    /// complete when delivered.
    #[serde(default = "yes")]
    pub two_way: bool,
    #[serde(default)]
    pub persistent: bool,
    /// Defaults to [`DEFAULT_COMMAND_TIMEOUT_MS`].
    #[serde(default)]
    pub timeout_ms: Option<i64>,
    /// Defaults to [`DEFAULT_COMMAND_TTL_MS`].
    #[serde(default)]
    pub ttl_ms: Option<i64>,
}

fn empty_params() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn yes() -> bool {
    true
}

/// Parses the params an operator typed (on the device page or in the CLI);
/// empty text means no params. The error says what is wrong.
pub fn parse_params(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(empty_params());
    }
    serde_json::from_str(text).map_err(|e| format!("params are not valid JSON: {e}"))
}

/// How long a two-way command waits for its answer unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT_MS: i64 = 30_000;

/// How long a persistent command waits for its device unless told
/// otherwise: a day, like a device that is offline overnight.
pub const DEFAULT_COMMAND_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// A device's desired state: the configuration operators want it to have,
/// kept retained on `command/<id>/desired` so that a device which boots and
/// subscribes gets it at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DesiredState {
    pub device: String,
    /// The JSON sent to the device, as the operator gave it.
    pub payload: serde_json::Value,
    /// Counts up from 1 with each change, so an acknowledgement can be
    /// matched to the state it acknowledges.
    pub version: i64,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub set_at: EpochMs,
    /// The account that set it.
    pub set_by: String,
    /// The newest version the device acknowledged (a PUBACK of the
    /// message, which needs a QoS 1 subscription).
    pub acked_version: Option<i64>,
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i64>))]
    pub acked_at: Option<EpochMs>,
}

impl DesiredState {
    /// Whether the device has acknowledged the current version.
    pub fn is_acknowledged(&self) -> bool {
        self.acked_version == Some(self.version)
    }
}
