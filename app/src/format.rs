//! Formatting of values and times that gives the same text on the server and
//! in the browser, so hydration never sees two different renderings.

use crate::model::{DeviceSummary, EpochMs, Presence};

/// Shows a value with at most two decimals and no trailing zeros: `22`,
/// `22.5`, `41.23`.
pub fn value(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Describes how long ago `ts` was, relative to `now`: `just now`, `12 s ago`,
/// `5 min ago`, `3 h ago`, `2 d ago`, or `never` for a zero timestamp.
pub fn ago(ts: EpochMs, now: EpochMs) -> String {
    if ts <= 0 {
        return "never".into();
    }
    let secs = (now - ts).max(0) / 1000;
    match secs {
        0..=1 => "just now".into(),
        2..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// Whether the device is connected right now, as the MQTT edge reports it.
pub fn is_online(summary: &DeviceSummary) -> bool {
    summary.presence.as_ref().is_some_and(|p| p.online)
}

/// When the device was last heard from: now while it is connected,
/// otherwise the later of its disconnect and its newest reading.
pub fn last_seen(summary: &DeviceSummary, now: EpochMs) -> EpochMs {
    match &summary.presence {
        Some(p) if p.online => now,
        Some(p) => p.last_seen.max(summary.last_seen),
        None => summary.last_seen,
    }
}

/// "online" or "offline", with the reason the last connection ended.
pub fn status(summary: &DeviceSummary) -> String {
    match &summary.presence {
        Some(p) if p.online => "online".into(),
        Some(Presence {
            reason: Some(why), ..
        }) => format!("offline ({why})"),
        _ => "offline".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_values() {
        let cases = [
            (22.0, "22"),
            (22.5, "22.5"),
            (41.234, "41.23"),
            (-0.001, "0"),
            (1e6, "1000000"),
            (-3.10, "-3.1"),
        ];
        for (v, want) in cases {
            assert_eq!(value(v), want, "{v}");
        }
    }

    #[test]
    fn formats_relative_times() {
        let now = 1_000_000_000;
        let cases = [
            (0, "never"),
            (now, "just now"),
            (now + 5000, "just now"),
            (now - 12_000, "12 s ago"),
            (now - 300_000, "5 min ago"),
            (now - 3 * 3_600_000, "3 h ago"),
            (now - 2 * 86_400_000, "2 d ago"),
        ];
        for (ts, want) in cases {
            assert_eq!(ago(ts, now), want, "{ts}");
        }
    }
}
