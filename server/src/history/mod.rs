//! History: `GET /api/devices/{id}/series` answers any time range with at
//! most `points` buckets per metric, each holding min, max, average, count
//! and first/last times, with boundaries in the viewer's time zone.
//!
//! The resolution is chosen per request: raw readings when the range holds
//! no more than `points` of them, otherwise buckets aggregated in the
//! database from the coarsest rollup that lines up with every boundary
//! (15-minute, then 1-minute), or from raw readings for steps under a
//! minute. Min and max are aggregated as min and max all the way down, so a
//! single-sample spike in a year of data is the maximum of its bucket.

pub mod buckets;

use app::model::{Bucket, BucketSeries, Resolution, SeriesResponse};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::names::valid_name;
use crate::store::retention::cutoff;
use crate::store::rollup::{Level, Source, LEVELS};
use crate::store::{Store, StoreError};
use buckets::Step;

/// Buckets per metric when the request does not say.
pub const DEFAULT_POINTS: usize = 1_000;

/// The most buckets per metric a request may ask for: several times the
/// width of any screen in pixels.
pub const MAX_POINTS: usize = 5_000;

/// The range when the request gives none: the last 24 hours.
const DEFAULT_SPAN_MS: i64 = 24 * 60 * 60 * 1000;

/// The query string of a series request, or what the dashboard asks for.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// One metric or a comma-separated list; every metric when absent.
    pub metric: Option<String>,
    /// Epoch milliseconds, inclusive; 24 hours before `to` when absent.
    pub from: Option<i64>,
    /// Epoch milliseconds, inclusive; now when absent.
    pub to: Option<i64>,
    /// The most buckets per metric; 1,000 when absent.
    pub points: Option<usize>,
    /// An IANA time zone such as `Europe/Berlin`; UTC when absent.
    pub tz: Option<String>,
}

/// Why a series query was refused, in words for the person who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub &'static str);

/// A validated series request.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRequest {
    pub metrics: Option<Vec<String>>,
    pub from: i64,
    pub to: i64,
    pub points: usize,
    pub tz: Tz,
    /// Where raw readings begin to be complete: retention has deleted those
    /// before it. `None` when raw readings are kept forever.
    pub raw_since: Option<i64>,
}

impl SeriesRequest {
    /// Checks a query string, filling in defaults relative to `now`; raw
    /// readings older than `keep_raw_ms` (if set) are taken to be deleted.
    pub fn parse(q: SeriesQuery, now: i64, keep_raw_ms: Option<i64>) -> Result<Self, QueryError> {
        let bad = QueryError;
        let to = q.to.unwrap_or(now).clamp(buckets::MIN_TS, buckets::MAX_TS);
        let from = q
            .from
            .unwrap_or(to.saturating_sub(DEFAULT_SPAN_MS))
            .clamp(buckets::MIN_TS, buckets::MAX_TS);
        if from > to {
            return Err(bad("from is after to"));
        }
        let points = q.points.unwrap_or(DEFAULT_POINTS);
        if !(1..=MAX_POINTS).contains(&points) {
            return Err(bad("points must be between 1 and 5000"));
        }
        let tz = match q.tz.as_deref() {
            None | Some("") => Tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| bad("unknown time zone (use an IANA name such as Europe/Berlin)"))?,
        };
        let metrics = match q.metric.as_deref() {
            None | Some("") => None,
            Some(list) => {
                let names: Vec<String> = list.split(',').map(str::to_owned).collect();
                if !names.iter().all(|m| valid_name(m)) {
                    return Err(bad("invalid metric name"));
                }
                Some(names)
            }
        };
        Ok(Self {
            metrics,
            from,
            to,
            points,
            tz,
            raw_since: cutoff(keep_raw_ms, now),
        })
    }

    /// Whether every raw reading of the range is still stored.
    pub fn raw_complete(&self) -> bool {
        self.raw_since.is_none_or(|since| self.from >= since)
    }
}

/// Answers a series request for device `id`; `None` if it is unknown.
pub async fn load(
    store: &Store,
    id: &str,
    request: &SeriesRequest,
) -> Result<Option<SeriesResponse>, StoreError> {
    let Some(all) = store.series_of(id, None).await? else {
        return Ok(None);
    };
    // Where retention has deleted raw readings, only rollups know the
    // data, so buckets are at least a minute wide.
    let min_step = if request.raw_complete() {
        0
    } else {
        LEVELS[0].width_ms
    };
    let (step, bounds) = buckets::plan(
        request.tz,
        request.from,
        request.to,
        request.points,
        min_step,
    );
    let mut series = Vec::new();
    for (series_id, metric) in all {
        if let Some(wanted) = &request.metrics {
            if !wanted.contains(&metric) {
                continue;
            }
        }
        let (resolution, buckets) = history_of(store, series_id, request, step, &bounds).await?;
        series.push(BucketSeries {
            metric,
            resolution,
            buckets,
        });
    }
    Ok(Some(SeriesResponse {
        device: id.to_owned(),
        from: request.from,
        to: request.to,
        tz: request.tz.name().to_owned(),
        step_ms: step.nominal_ms(),
        series,
    }))
}

/// One series' buckets: raw readings if there are few, else aggregates.
async fn history_of(
    store: &Store,
    series_id: i64,
    request: &SeriesRequest,
    step: Step,
    bounds: &[i64],
) -> Result<(Resolution, Vec<Bucket>), StoreError> {
    // Asking for one reading more than fits tells "few" from "many" with a
    // bounded read, whatever the size of the range.
    let limit = u64::try_from(request.points).unwrap_or(u64::MAX) + 1;
    let raw = if request.raw_complete() {
        store
            .raw_points(series_id, request.from, request.to, limit)
            .await?
    } else {
        Vec::new()
    };
    if request.raw_complete() && raw.len() <= request.points {
        let buckets = raw
            .into_iter()
            .map(|(ts, value)| Bucket {
                start: ts,
                end: ts + 1,
                first: ts,
                last: ts,
                count: 1,
                min: value,
                max: value,
                avg: value,
            })
            .collect();
        return Ok((Resolution::Raw, buckets));
    }
    let (resolution, source) = match choose_source(step, bounds) {
        // Raw readings of this range are partly deleted, and no rollup
        // lines up exactly (a zone offset by seconds, as many were before
        // the 1970s): the 1-minute rollups are off by under a minute,
        // which beats an empty chart.
        (Resolution::RawBuckets, _) if !request.raw_complete() => {
            (Resolution::Rollup1m, Source::Rollup(LEVELS[0]))
        }
        chosen => chosen,
    };
    let buckets = store
        .aggregate(series_id, source, bounds)
        .await?
        .into_iter()
        .filter_map(|(i, s)| {
            Some(Bucket {
                start: *bounds.get(i)?,
                end: *bounds.get(i + 1)?,
                first: s.first_ts,
                last: s.last_ts,
                count: s.count,
                min: s.min,
                max: s.max,
                avg: s.sum / s.count.max(1) as f64,
            })
        })
        .collect();
    Ok((resolution, buckets))
}

/// The coarsest rollup whose buckets nest exactly inside every chart
/// bucket, or raw readings when none does (steps under a minute, or a zone
/// whose offset then was not a whole number of minutes, as with local mean
/// time, used in places until the 1970s).
pub fn choose_source(step: Step, bounds: &[i64]) -> (Resolution, Source) {
    let fits = |level: &Level| {
        step.nominal_ms() >= level.width_ms
            && bounds.iter().all(|b| b.rem_euclid(level.width_ms) == 0)
    };
    match LEVELS.iter().rev().find(|level| fits(level)) {
        Some(level) if level.width_ms == LEVELS[1].width_ms => {
            (Resolution::Rollup15m, Source::Rollup(*level))
        }
        Some(level) => (Resolution::Rollup1m, Source::Rollup(*level)),
        None => (Resolution::RawBuckets, Source::Raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rollup::{summarise, Summary};

    const MINUTE: i64 = 60_000;

    #[test]
    fn sources_follow_the_step_and_the_alignment_of_every_boundary() {
        let utc = Tz::UTC;
        let t0 = 1_767_225_600_000;
        let (step, bounds) = buckets::plan(utc, t0, t0 + 365 * 24 * 60 * MINUTE, 1000, 0);
        assert_eq!(choose_source(step, &bounds).0, Resolution::Rollup15m);
        let (step, bounds) = buckets::plan(utc, t0, t0 + 24 * 60 * MINUTE, 1000, 0);
        assert_eq!(choose_source(step, &bounds).0, Resolution::Rollup1m);
        let (step, bounds) = buckets::plan(utc, t0, t0 + 60 * MINUTE, 1000, 0);
        assert_eq!(choose_source(step, &bounds).0, Resolution::RawBuckets);
        // Kathmandu's midnight is 18:15 UTC: 15-minute rollups still fit.
        let tz: Tz = "Asia/Kathmandu".parse().expect("zone");
        let (step, bounds) = buckets::plan(tz, t0, t0 + 365 * 24 * 60 * MINUTE, 1000, 0);
        assert_eq!(choose_source(step, &bounds).0, Resolution::Rollup15m);
    }

    /// A year of 1-minute readings at 20.0 with one spike: the rollups and
    /// the chart buckets built on them keep it as the maximum of its bucket.
    #[test]
    fn a_one_sample_spike_in_a_year_survives_every_level() {
        let t0 = 1_767_225_600_000;
        let spike_at = t0 + 200_003 * MINUTE + 17_000;
        let rows: Vec<(i64, i64, f64)> = (0..525_600)
            .map(|i| {
                let ts = t0 + i * MINUTE + 17_000;
                (1, ts, if ts == spike_at { 1e6 } else { 20.0 })
            })
            .collect();
        let fifteen = summarise(&rows, 15 * MINUTE);
        assert_eq!(fifteen.len(), 35_040);
        let tz: Tz = "America/New_York".parse().expect("zone");
        let (step, bounds) = buckets::plan(tz, t0, t0 + 365 * 24 * 60 * MINUTE, 1000, 0);
        assert!(
            matches!(choose_source(step, &bounds).1, Source::Rollup(l) if l.width_ms == 15 * MINUTE)
        );
        // Fold the rollups into the chart's buckets, as the database does.
        let mut chart: Vec<Option<Summary>> = vec![None; bounds.len() - 1];
        for (_, bucket, s) in &fifteen {
            let i = bounds.partition_point(|b| b <= bucket) - 1;
            match &mut chart[i] {
                Some(acc) => acc.merge(s),
                slot => *slot = Some(*s),
            }
        }
        let spiky: Vec<usize> = chart
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some_and(|s| s.max > 20.0))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(spiky.len(), 1, "exactly one bucket shows the spike");
        let s = chart[spiky[0]].expect("bucket");
        assert_eq!((s.max, s.min), (1e6, 20.0));
        assert!(bounds[spiky[0]] <= spike_at && spike_at < bounds[spiky[0] + 1]);
        let total: i64 = chart.iter().flatten().map(|s| s.count).sum();
        assert_eq!(total, 525_600, "every reading counted once");
    }

    #[test]
    fn requests_are_checked_and_defaulted() {
        let q = |s: &str| -> SeriesQuery { serde_json::from_str(s).expect("query") };
        let now = 1_767_225_600_000;
        let r = SeriesRequest::parse(q("{}"), now, None).expect("defaults");
        assert_eq!(
            (r.from, r.to, r.points, r.tz),
            (now - DEFAULT_SPAN_MS, now, 1000, Tz::UTC)
        );
        let r = SeriesRequest::parse(q("{}"), now, Some(5_000)).expect("retention");
        assert_eq!(r.raw_since, Some(now - 5_000));
        let r = SeriesRequest::parse(
            q(r#"{"metric":"temp,hum","tz":"Europe/Berlin"}"#),
            now,
            None,
        )
        .expect("ok");
        assert_eq!(r.metrics, Some(vec!["temp".into(), "hum".into()]));
        for bad in [
            r#"{"from":5,"to":4}"#,
            r#"{"points":0}"#,
            r#"{"points":5001}"#,
            r#"{"tz":"Mars/Olympus"}"#,
            r#"{"metric":"<script>"}"#,
        ] {
            assert!(SeriesRequest::parse(q(bad), now, None).is_err(), "{bad}");
        }
    }
}
