//! Which topics a device may use: its own, and nothing else.
//!
//! Every rule takes the device id from the authenticated connection, never
//! from the topic, so a device can name another device in a topic but can
//! never act as it. This module is pure, which keeps the rules one table of
//! tests.

/// ThingsBoard's telemetry topic; every device shares it and is told apart
/// by its login.
pub const THINGSBOARD_TELEMETRY: &str = "v1/devices/me/telemetry";

/// ThingsBoard's RPC request filter, which devices share the same way.
const THINGSBOARD_RPC: &str = "v1/devices/me/rpc/request/";

/// Where devices answer ThingsBoard RPC requests, followed by the id.
const THINGSBOARD_RPC_RESPONSE: &str = "v1/devices/me/rpc/response/";

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

/// Which answer topic a device published to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerTopic {
    /// `command/<device>/response`: the id is in the MQTT 5 correlation
    /// data or in the payload's `id`.
    Native,
    /// `v1/devices/me/rpc/response/<id>`.
    ThingsBoard(String),
}

/// Which of a device's sessions receive commands, and on which topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Subscribed to `command/<device>`.
    pub native: bool,
    /// Subscribed to ThingsBoard's `v1/devices/me/rpc/request/+`.
    pub thingsboard: bool,
}

impl Route {
    /// Whether any command reaches the session.
    pub fn any(self) -> bool {
        self.native || self.thingsboard
    }

    /// The commands either route receives.
    pub fn or(self, other: Self) -> Self {
        Self {
            native: self.native || other.native,
            thingsboard: self.thingsboard || other.thingsboard,
        }
    }
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

/// The device a `command/<id>[/…]` filter names, whether or not it is a
/// valid id; `None` for any other filter.
pub fn command_owner(filter: &str) -> Option<&str> {
    filter.strip_prefix("command/")?.split('/').next()
}

/// Checks a SUBSCRIBE filter from `device` and returns the filter to use in
/// the broker. A device may only receive its own commands, and only on the
/// filters that receive them: `command/<id>`, `command/<id>/#`, its desired
/// state's `command/<id>/desired`, or
/// ThingsBoard's shared RPC filter, which is mapped to one fixed per-device
/// topic inside the broker so that devices never see each other's
/// requests. Nothing else is granted, not even other filters below the
/// device's own level: rumqttd keeps a commit log for every filter it has
/// seen, for good, so each filter a client may invent is memory it can pin.
/// (For the same reason the request id is not part of the broker topic.)
pub fn subscribe(device: &str, filter: &str) -> Option<String> {
    if let Some(rest) = filter.strip_prefix(THINGSBOARD_RPC) {
        return (rest == "+" || rest == "#").then(|| thingsboard_topic(device));
    }
    let own = filter.strip_prefix("command/")?.strip_prefix(device)?;
    (own.is_empty() || own == "/#" || own == DESIRED_SUFFIX).then(|| filter.to_owned())
}

/// What follows `command/<id>` in a device's desired-state topic.
const DESIRED_SUFFIX: &str = "/desired";

/// The topic a device's desired state is retained on: below its commands,
/// so that a device subscribed to `command/<id>/#` gets it too.
pub fn desired_topic(device: &str) -> String {
    format!("command/{device}{DESIRED_SUFFIX}")
}

/// Whether a granted filter (as the device wrote it) receives the device's
/// desired state: `command/<id>/#` or the desired topic itself.
pub fn receives_desired(device: &str, filter: &str) -> bool {
    filter
        .strip_prefix("command/")
        .and_then(|rest| rest.strip_prefix(device))
        .is_some_and(|rest| rest == "/#" || rest == DESIRED_SUFFIX)
}

/// The broker topic of a device's ThingsBoard RPC requests.
fn thingsboard_topic(device: &str) -> String {
    format!("tb/{device}/rpc/request")
}

/// The topic a device sees for a message the broker delivers on
/// `broker_topic`, undoing the mapping of [`subscribe`]: a ThingsBoard
/// request gets its command `id` back in the topic.
pub fn delivered_topic(device: &str, broker_topic: &str, id: Option<&str>) -> String {
    match id {
        Some(id) if broker_topic == thingsboard_topic(device) => {
            format!("{THINGSBOARD_RPC}{id}")
        }
        _ => broker_topic.to_owned(),
    }
}

/// Checks a PUBLISH of `device` as an answer to a command: on
/// `command/<device>/response`, or on ThingsBoard's
/// `v1/devices/me/rpc/response/<id>`. Whether the id is one of the device's
/// commands is for the command service to decide.
pub fn answer(device: &str, topic: &str) -> Option<AnswerTopic> {
    // Any id is taken as an answer, so that a bad one is refused and
    // counted as a bad answer rather than as a trespass.
    if let Some(id) = topic.strip_prefix(THINGSBOARD_RPC_RESPONSE) {
        return Some(AnswerTopic::ThingsBoard(id.to_owned()));
    }
    let rest = topic.strip_prefix("command/")?;
    (rest.strip_suffix("/response")? == device).then_some(AnswerTopic::Native)
}

/// The broker topics a command to `device` is published on: the seed's
/// `command/<device>`, and the per-device form of ThingsBoard's request
/// topic (see [`subscribe`]).
pub fn command_topics(device: &str) -> (String, String) {
    (format!("command/{device}"), thingsboard_topic(device))
}

/// Which commands a granted filter (as the device wrote it) receives:
/// `command/<device>` itself, or ThingsBoard's requests.
pub fn command_route(device: &str, filter: &str) -> Route {
    let native = filter
        .strip_prefix("command/")
        .and_then(|rest| rest.strip_prefix(device))
        .is_some_and(|rest| rest.is_empty() || rest == "/#");
    Route {
        native,
        thingsboard: filter.starts_with(THINGSBOARD_RPC),
    }
}

/// Where a device answers a command that reached it on `delivered` (its
/// own view of the topic), for MQTT 5's response-topic property.
pub fn answer_topic_for(device: &str, delivered: &str, id: &str) -> String {
    if delivered.starts_with(THINGSBOARD_RPC) {
        format!("{THINGSBOARD_RPC_RESPONSE}{id}")
    } else {
        format!("command/{device}/response")
    }
}

/// The feed of committed readings: one message per device and commit on
/// `sensor/<device>`.
pub fn feed_topic(device: &str) -> String {
    format!("sensor/{device}")
}

/// Whether `filter` may be granted to a service account: `sensor/#`,
/// `sensor/+` or `sensor/<device id>`, the filters that select from the
/// feed's topics.
pub fn valid_grant(filter: &str) -> bool {
    filter
        .strip_prefix("sensor/")
        .is_some_and(|rest| rest == "#" || rest == "+" || crate::names::valid_name(rest))
}

/// Whether `topic` may be granted to a service account for publishing
/// commands: `command/+` (every device) or `command/<device id>`.
pub fn valid_command_grant(topic: &str) -> bool {
    topic
        .strip_prefix("command/")
        .is_some_and(|rest| rest == "+" || crate::names::valid_name(rest))
}

/// The device a service account's PUBLISH on `topic` sends a command to,
/// if `topic` is `command/<device id>` and one of `grants` covers it.
pub fn service_command<'t>(grants: &[String], topic: &'t str) -> Option<&'t str> {
    let device = topic
        .strip_prefix("command/")
        .filter(|d| crate::names::valid_name(d))?;
    grants
        .iter()
        .any(|g| g == "command/+" || g.strip_prefix("command/") == Some(device))
        .then_some(device)
}

/// Splits an MQTT 5 shared subscription, `$share/<group>/<filter>`, into
/// its group and filter; any other filter has no group. `None` for a
/// malformed one (an empty or wildcard group, or no filter).
pub fn shared(filter: &str) -> Option<(Option<&str>, &str)> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Some((None, filter));
    };
    let (group, filter) = rest.split_once('/')?;
    let bad_group = group.is_empty() || group.contains(['+', '#']);
    (!bad_group && !filter.is_empty()).then_some((Some(group), filter))
}

/// Checks a service account's SUBSCRIBE `filter` (its group already split
/// off) against its grants: allowed if every feed topic the filter can
/// match is one a grant matches. A grant of `sensor/#` covers any filter
/// under `sensor/`; `sensor/+` covers the same but `sensor/+/#` (which
/// reaches below the feed's level); a grant of `sensor/<id>` covers that
/// filter alone.
pub fn service_subscribe(grants: &[String], filter: &str) -> bool {
    if !valid_grant(filter) && filter != "sensor/+/#" {
        return false;
    }
    grants
        .iter()
        .any(|g| g == filter || g == "sensor/#" || (g == "sensor/+" && filter != "sensor/+/#"))
}

/// Whether MQTT topic filter `filter` matches `topic` (no wildcards in it).
/// `#` matches the parent level too; a `$` topic is matched only by a
/// filter that names its first level.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
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
            Some("tb/A/rpc/request")
        );
        assert_eq!(
            subscribe("A", "command/A/desired").as_deref(),
            Some("command/A/desired")
        );
        for refused in [
            "command/B/desired",
            "command/A/desired/#",
            "command/B",
            "command/+",
            "command/#",
            "#",
            "sensor/#",
            "sensor/A",
            "tb/B/rpc/request/+",
            "v1/devices/me/rpc/request/7",
            "command/A/a b",
            // Below the device's own level, nothing but `#`: each filter
            // would be a commit log in the router for good.
            "command/A/+",
            "command/A/x",
            "command/A/r1x2",
            "command/A/#/x",
            "command/AB",
        ] {
            assert_eq!(subscribe("A", refused), None, "{refused}");
        }
        assert_eq!(
            delivered_topic("A", "tb/A/rpc/request", Some("42")),
            "v1/devices/me/rpc/request/42"
        );
        assert_eq!(delivered_topic("A", "command/A", Some("42")), "command/A");
    }

    #[test]
    fn service_accounts_subscribe_only_within_their_grants() {
        let all = ["sensor/#".to_owned()];
        let one = ["sensor/A".to_owned()];
        let any_device = ["sensor/+".to_owned()];
        for f in ["sensor/#", "sensor/+", "sensor/A", "sensor/B", "sensor/+/#"] {
            assert!(service_subscribe(&all, f), "{f}");
        }
        assert!(service_subscribe(&one, "sensor/A"));
        for f in [
            "sensor/#",
            "sensor/+",
            "sensor/B",
            "#",
            "command/A",
            "sensor/A/x",
        ] {
            assert!(!service_subscribe(&one, f), "{f}");
        }
        assert!(service_subscribe(&any_device, "sensor/B"));
        assert!(!service_subscribe(&any_device, "sensor/+/#"));
        for bad in [
            "#",
            "sensor",
            "sensor/a b",
            "command/#",
            "sensor/A/#",
            "$SYS/#",
            "",
        ] {
            assert!(!valid_grant(bad), "{bad}");
        }
    }

    #[test]
    fn service_accounts_send_commands_only_where_granted() {
        for good in ["command/+", "command/Pump1"] {
            assert!(valid_command_grant(good), "{good}");
        }
        for bad in [
            "command/#",
            "command/",
            "command/a/b",
            "sensor/+",
            "command/+/#",
            "#",
        ] {
            assert!(!valid_command_grant(bad), "{bad}");
        }
        let one = vec!["command/Pump1".to_owned()];
        let all = vec!["command/+".to_owned()];
        assert_eq!(service_command(&one, "command/Pump1"), Some("Pump1"));
        assert_eq!(service_command(&one, "command/Pump2"), None);
        assert_eq!(service_command(&all, "command/Pump2"), Some("Pump2"));
        // Not a device's command topic: answers, desired state, wildcards
        // and other namespaces are never a command.
        for topic in [
            "command/Pump1/response",
            "command/Pump1/desired",
            "command/+",
            "command/#",
            "sensor/Pump1",
            "v1/devices/me/rpc/request/1",
        ] {
            assert_eq!(service_command(&all, topic), None, "{topic}");
        }
    }

    #[test]
    fn shared_subscriptions_split_into_group_and_filter() {
        assert_eq!(shared("sensor/#"), Some((None, "sensor/#")));
        assert_eq!(shared("$share/g1/sensor/#"), Some((Some("g1"), "sensor/#")));
        for bad in [
            "$share/",
            "$share/g1",
            "$share//sensor/#",
            "$share/+/sensor/#",
        ] {
            assert_eq!(shared(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_match_topics_as_mqtt_says() {
        let cases = [
            ("sensor/#", "sensor/A", true),
            ("sensor/#", "sensor", true),
            ("sensor/+", "sensor/A", true),
            ("sensor/+", "sensor/A/b", false),
            ("sensor/A", "sensor/A", true),
            ("sensor/A", "sensor/AB", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} {topic}");
        }
    }

    #[test]
    fn the_desired_state_reaches_its_own_device_only() {
        assert_eq!(desired_topic("A"), "command/A/desired");
        assert!(receives_desired("A", "command/A/#"));
        assert!(receives_desired("A", "command/A/desired"));
        for not in ["command/A", "command/B/#", "command/AB/desired", "#"] {
            assert!(!receives_desired("A", not), "{not}");
        }
        // It is not a command: a subscription to it alone receives none.
        assert!(!command_route("A", "command/A/desired").any());
    }

    #[test]
    fn a_device_answers_only_its_own_commands() {
        assert_eq!(answer("A", "command/A/response"), Some(AnswerTopic::Native));
        assert_eq!(
            answer("A", "v1/devices/me/rpc/response/42"),
            Some(AnswerTopic::ThingsBoard("42".into()))
        );
        for refused in [
            "command/B/response",
            "command/A",
            "command/A/response/x",
            "command/AB/response",
        ] {
            assert_eq!(answer("A", refused), None, "{refused}");
        }
        // A bad ThingsBoard id is an answer, refused later as unknown.
        assert_eq!(
            answer("A", "v1/devices/me/rpc/response/a/b"),
            Some(AnswerTopic::ThingsBoard("a/b".into()))
        );
    }

    #[test]
    fn only_filters_that_match_the_command_topic_receive_commands() {
        let native = Route {
            native: true,
            thingsboard: false,
        };
        assert_eq!(command_route("A", "command/A"), native);
        assert_eq!(command_route("A", "command/A/#"), native);
        assert_eq!(command_route("A", "command/A/+"), Route::default());
        assert_eq!(command_route("A", "command/AB"), Route::default());
        assert!(command_route("A", "v1/devices/me/rpc/request/+").thingsboard);
        assert_eq!(
            answer_topic_for("A", "v1/devices/me/rpc/request/7", "7"),
            "v1/devices/me/rpc/response/7"
        );
        assert_eq!(
            answer_topic_for("A", "command/A", "7"),
            "command/A/response"
        );
    }
}
