//! The device page's time range: a live window that follows the clock, a
//! fixed "last N" period, or a custom `[from, to]`, as it appears in the
//! page's URL (`?range=24h` or `?from=…&to=…`), so a view can be shared.

use crate::model::EpochMs;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The range picker's presets: name, span, and whether the chart follows
/// live readings.
pub const PRESETS: [(&str, i64, bool); 7] = [
    ("5m", 5 * MINUTE, true),
    ("15m", 15 * MINUTE, true),
    ("1h", HOUR, true),
    ("24h", DAY, false),
    ("7d", 7 * DAY, false),
    ("30d", 30 * DAY, false),
    ("1y", 365 * DAY, false),
];

/// The preset a device page opens with.
pub const DEFAULT_PRESET: &str = "15m";

/// A chart's time range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Range {
    /// One of [`PRESETS`], ending now.
    Preset(&'static str),
    /// A fixed window, from a zoom or the custom inputs.
    Custom { from: EpochMs, to: EpochMs },
}

impl Default for Range {
    fn default() -> Self {
        Self::Preset(DEFAULT_PRESET)
    }
}

impl Range {
    /// Reads the URL's query values; anything unusable falls back to the
    /// default rather than failing the page.
    pub fn from_query(range: Option<&str>, from: Option<&str>, to: Option<&str>) -> Self {
        let parsed = (
            from.and_then(|f| f.parse::<i64>().ok()),
            to.and_then(|t| t.parse::<i64>().ok()),
        );
        if let (Some(from), Some(to)) = parsed {
            if from < to {
                return Self::Custom { from, to };
            }
        }
        range
            .and_then(|r| PRESETS.iter().find(|(name, _, _)| *name == r))
            .map_or_else(Self::default, |(name, _, _)| Self::Preset(name))
    }

    /// The query string that reproduces this range.
    pub fn to_query(&self) -> String {
        match self {
            Self::Preset(name) => format!("range={name}"),
            Self::Custom { from, to } => format!("from={from}&to={to}"),
        }
    }

    /// Whether the chart appends live readings (and slides with the clock).
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Preset(name) if PRESETS.iter().any(|(n, _, live)| n == name && *live))
    }

    /// The span of a preset; `None` for a custom range.
    pub fn span(&self) -> Option<i64> {
        match self {
            Self::Preset(name) => PRESETS
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, span, _)| *span),
            Self::Custom { .. } => None,
        }
    }

    /// The window at time `now`.
    pub fn window(&self, now: EpochMs) -> (EpochMs, EpochMs) {
        match self {
            Self::Custom { from, to } => (*from, *to),
            Self::Preset(_) => (now - self.span().unwrap_or(DAY), now),
        }
    }

    /// The preset's name, or `custom`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Preset(name) => name,
            Self::Custom { .. } => "custom",
        }
    }
}

/// How many buckets to ask for: one per pixel of the chart's width, so the
/// chart is drawn at pixel resolution and no finer.
pub fn points_for_width(width_px: f64) -> usize {
    (width_px.round() as usize).clamp(100, 2_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_and_bad_values_fall_back() {
        for r in [
            Range::Preset("24h"),
            Range::Preset("5m"),
            Range::Custom { from: 5, to: 9 },
        ] {
            let q = r.to_query();
            let get = |k: &str| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            };
            assert_eq!(Range::from_query(get("range"), get("from"), get("to")), r);
        }
        assert_eq!(Range::from_query(Some("2w"), None, None), Range::default());
        assert_eq!(
            Range::from_query(None, Some("9"), Some("5")),
            Range::default()
        );
        assert_eq!(
            Range::from_query(None, Some("x"), Some("5")),
            Range::default()
        );
    }

    #[test]
    fn only_the_short_presets_are_live() {
        assert!(Range::Preset("1h").is_live());
        assert!(!Range::Preset("24h").is_live());
        assert!(!Range::Custom { from: 1, to: 2 }.is_live());
        assert_eq!(Range::Preset("7d").window(10 * DAY), (3 * DAY, 10 * DAY));
    }
}
