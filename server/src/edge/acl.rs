//! Which topics a device may use: its own, and nothing else.
//!
//! Every rule takes the device id from the authenticated connection, never
//! from the topic, so a device can name another device in a topic but can
//! never act as it. This module is pure, which keeps the rules one table of
//! tests.

use crate::ingest::decode::valid_name;

/// ThingsBoard's telemetry topic; every device shares it and is told apart
/// by its login.
pub const THINGSBOARD_TELEMETRY: &str = "v1/devices/me/telemetry";

/// ThingsBoard's RPC request filter, which devices share the same way.
const THINGSBOARD_RPC: &str = "v1/devices/me/rpc/request/";

/// Where an allowed publish goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Telemetry {
    /// `sensor/<id>` or below it. Whether the rest of the topic is a valid
    /// metric is for ingest to decide: junk in a device's own namespace is
    /// rejected and counted like a bad payload, not treated as an attack.
    Sensor,
    /// `v1/devices/me/telemetry`.
    ThingsBoard,
}

/// Checks a PUBLISH (or a Last Will) from `device` to `topic`. `None` means
/// refused: the topic is not the device's own.
pub fn publish(device: &str, topic: &str) -> Option<Telemetry> {
    if topic == THINGSBOARD_TELEMETRY {
        return Some(Telemetry::ThingsBoard);
    }
    (sensor_owner(topic)? == device).then_some(Telemetry::Sensor)
}

/// The device a `sensor/<id>[/…]` topic names, whether or not it is a
/// valid id; `None` for any other topic.
pub fn sensor_owner(topic: &str) -> Option<&str> {
    topic.strip_prefix("sensor/")?.split('/').next()
}

/// Checks a SUBSCRIBE filter from `device` and returns the filter to use in
/// the broker. A device may only receive its own commands: on
/// `command/<id>` (and below it), or on ThingsBoard's shared RPC topic,
/// which is mapped to a per-device topic inside the broker so that devices
/// never see each other's requests.
pub fn subscribe(device: &str, filter: &str) -> Option<String> {
    if let Some(rest) = filter.strip_prefix(THINGSBOARD_RPC) {
        return (rest == "+" || rest == "#").then(|| format!("tb/{device}/rpc/request/{rest}"));
    }
    let rest = filter.strip_prefix("command/")?;
    let (owner, below) = match rest.split_once('/') {
        Some((owner, below)) => (owner, Some(below)),
        None => (rest, None),
    };
    let below_ok = match below {
        None => true,
        // Wildcards are allowed below the device's own level only.
        Some(b) => b
            .split('/')
            .all(|level| level == "+" || level == "#" || valid_name(level)),
    };
    (owner == device && below_ok).then(|| filter.to_owned())
}

/// The topic a device sees for a message the broker delivers on
/// `broker_topic`, undoing the mapping of [`subscribe`].
pub fn delivered_topic(device: &str, broker_topic: &str) -> String {
    let mapped = format!("tb/{device}/rpc/request/");
    match broker_topic.strip_prefix(&mapped) {
        Some(id) => format!("{THINGSBOARD_RPC}{id}"),
        None => broker_topic.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_publishes_only_to_its_own_telemetry_topics() {
        let cases: [(&str, Option<Telemetry>); 12] = [
            ("sensor/A", Some(Telemetry::Sensor)),
            ("sensor/A/temp", Some(Telemetry::Sensor)),
            ("v1/devices/me/telemetry", Some(Telemetry::ThingsBoard)),
            // Malformed, but the device's own: ingest rejects and counts it.
            ("sensor/A/temp/x", Some(Telemetry::Sensor)),
            ("sensor/B", None),
            ("sensor/B/temp", None),
            ("sensor/AB", None),
            ("sensor/", None),
            ("sensor/+", None),
            ("command/A", None),
            ("v1/devices/me/attributes", None),
            ("", None),
        ];
        for (topic, want) in cases {
            assert_eq!(publish("A", topic), want, "{topic}");
        }
    }

    #[test]
    fn a_device_subscribes_only_to_its_own_commands() {
        assert_eq!(subscribe("A", "command/A").as_deref(), Some("command/A"));
        assert_eq!(
            subscribe("A", "command/A/#").as_deref(),
            Some("command/A/#")
        );
        assert_eq!(
            subscribe("A", "v1/devices/me/rpc/request/+").as_deref(),
            Some("tb/A/rpc/request/+")
        );
        for refused in [
            "command/B",
            "command/+",
            "command/#",
            "#",
            "sensor/#",
            "sensor/A",
            "tb/B/rpc/request/+",
            "v1/devices/me/rpc/request/7",
            "command/A/a b",
        ] {
            assert_eq!(subscribe("A", refused), None, "{refused}");
        }
        assert_eq!(
            delivered_topic("A", "tb/A/rpc/request/42"),
            "v1/devices/me/rpc/request/42"
        );
        assert_eq!(delivered_topic("A", "command/A"), "command/A");
    }
}
