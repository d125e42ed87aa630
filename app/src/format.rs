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

/// Whether nothing has been heard of the device: no reading stored and
/// no connection since the server started.
pub fn never_heard(summary: &DeviceSummary) -> bool {
    summary.presence.is_none() && summary.latest.is_empty()
}

/// "online" or "offline", with the reason the last connection ended.
pub fn status(summary: &DeviceSummary) -> String {
    if summary.disabled {
        return "disabled".into();
    }
    if never_heard(summary) {
        return "never connected — waiting for its first message".into();
    }
    match &summary.presence {
        Some(p) if p.online => "online".into(),
        Some(Presence {
            reason: Some(why), ..
        }) => format!("offline ({why})"),
        _ => "offline".into(),
    }
}

/// A time as `2026-11-29 19:30 UTC`. Pages show it where server and
/// browser must render the same text; charts show local time.
pub fn utc_minute(ts: EpochMs) -> String {
    let minutes = ts.div_euclid(60_000);
    let (days, minute_of_day) = (minutes.div_euclid(1440), minutes.rem_euclid(1440));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// A time as `2026-11-29 19:30:05 UTC`, for logs read to the second.
pub fn utc_second(ts: EpochMs) -> String {
    let minute = utc_minute(ts);
    let seconds = ts.div_euclid(1000).rem_euclid(60);
    match minute.strip_suffix(" UTC") {
        Some(head) => format!("{head}:{seconds:02} UTC"),
        None => minute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_minutes() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(1_767_225_600_000), "2026-01-01 00:00 UTC");
        assert_eq!(utc_minute(951_782_400_000 + 59_999), "2000-02-29 00:00 UTC");
        assert_eq!(utc_minute(-60_000), "1969-12-31 23:59 UTC");
    }

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

/// Escapes text for insertion into HTML, for the few places (chart
/// tooltips) where a library takes markup rather than text.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod escape_tests {
    #[test]
    fn markup_becomes_text() {
        assert_eq!(
            super::escape_html(r#"<img src=x onerror="alert('1')">&"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
    }
}
