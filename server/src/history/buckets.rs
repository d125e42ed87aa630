//! Bucket maths: where the buckets of a time range begin and end in the
//! viewer's time zone.
//!
//! A bucket boundary is a point on the viewer's wall clock: a multiple of
//! the step since local midnight, a local midnight, or the first of a
//! month. Boundaries are then instants, strictly increasing, so every
//! instant falls in exactly one bucket: a DST change makes one bucket
//! shorter or longer (a 23-hour or 25-hour day, a 5-hour or 7-hour
//! "6 hours"), never a duplicate or a gap. Hourly buckets across a
//! fall-back change stay one real hour each, so the repeated local hour
//! appears twice, once per UTC offset, as it happened.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone};
use chrono_tz::Tz;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The earliest and latest instants the series API accepts: 1900 and 9999.
pub const MIN_TS: i64 = -2_208_988_800_000;
pub const MAX_TS: i64 = 253_402_300_799_999;

/// A bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A number of milliseconds that divides a day, counted on the local
    /// wall clock from midnight.
    Clock(i64),
    /// Local calendar days; a step of 7 starts weeks on Monday.
    Days(u32),
    /// Calendar months, starting on the 1st; 12 and up are whole years.
    Months(u32),
}

impl Step {
    /// The usual length of one bucket, for choosing a step and for the
    /// client's gap detection; real buckets differ across DST changes and
    /// month lengths.
    pub fn nominal_ms(self) -> i64 {
        match self {
            Step::Clock(ms) => ms,
            Step::Days(d) => i64::from(d) * DAY,
            Step::Months(m) => i64::from(m) * 30 * DAY + i64::from(m / 12) * 5 * DAY,
        }
    }
}

/// Every step a chart may use, finest first: round numbers on a clock or
/// calendar, so that labels read naturally.
pub const STEPS: &[Step] = &[
    Step::Clock(SECOND),
    Step::Clock(2 * SECOND),
    Step::Clock(5 * SECOND),
    Step::Clock(10 * SECOND),
    Step::Clock(15 * SECOND),
    Step::Clock(30 * SECOND),
    Step::Clock(MINUTE),
    Step::Clock(2 * MINUTE),
    Step::Clock(5 * MINUTE),
    Step::Clock(10 * MINUTE),
    Step::Clock(15 * MINUTE),
    Step::Clock(30 * MINUTE),
    Step::Clock(HOUR),
    Step::Clock(2 * HOUR),
    Step::Clock(3 * HOUR),
    Step::Clock(6 * HOUR),
    Step::Clock(12 * HOUR),
    Step::Days(1),
    Step::Days(7),
    Step::Months(1),
    Step::Months(3),
    Step::Months(6),
    Step::Months(12),
    Step::Months(24),
    Step::Months(60),
    Step::Months(120),
    Step::Months(600),
    Step::Months(1200),
    Step::Months(12_000),
];

/// The finest step of at least `min_step_ms` that covers `[from, to]` in at
/// most `max_buckets` buckets, with its boundaries: `bounds[0] <= from`,
/// `to < bounds[last]`, and bucket `i` is `[bounds[i], bounds[i + 1])`.
pub fn plan(tz: Tz, from: i64, to: i64, max_buckets: usize, min_step_ms: i64) -> (Step, Vec<i64>) {
    let span = to.saturating_sub(from).max(1);
    let budget = i64::try_from(max_buckets.max(1)).unwrap_or(i64::MAX);
    for &step in STEPS {
        // Cheap rejection first: a step this short cannot fit.
        if step.nominal_ms() < min_step_ms || step.nominal_ms().saturating_mul(budget) < span {
            continue;
        }
        if let Some(bounds) = boundaries(step, tz, from, to, max_buckets) {
            return (step, bounds);
        }
    }
    // A thousand years per bucket fits any accepted range in a few buckets.
    let last = Step::Months(12_000);
    let bounds = boundaries(last, tz, from, to, usize::MAX).unwrap_or_else(|| vec![from, to + 1]);
    (last, bounds)
}

/// The boundaries of `step` buckets covering `[from, to]`, or `None` if
/// that takes more than `max_buckets` buckets.
pub fn boundaries(step: Step, tz: Tz, from: i64, to: i64, max_buckets: usize) -> Option<Vec<i64>> {
    let mut bounds = vec![first_boundary(step, tz, from)];
    while let Some(&last) = bounds.last() {
        if last > to {
            break;
        }
        if bounds.len() > max_buckets {
            return None;
        }
        bounds.push(next_boundary(step, tz, last));
    }
    Some(bounds)
}

/// The offset from UTC at instant `ts`, in milliseconds.
fn offset_ms(tz: Tz, ts: i64) -> i64 {
    match DateTime::from_timestamp_millis(ts) {
        Some(t) => {
            i64::from(
                tz.offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc(),
            ) * SECOND
        }
        None => 0,
    }
}

/// How far past a step boundary the wall clock reads at `ts`.
fn past_clock_boundary(tz: Tz, ts: i64, step_ms: i64) -> i64 {
    (ts + offset_ms(tz, ts)).rem_euclid(step_ms)
}

/// The local date at instant `ts`. Callers clamp instants to
/// [`MIN_TS`]..=[`MAX_TS`], which chrono always represents, so the default
/// is never used.
fn local_date(tz: Tz, ts: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(ts)
        .map(|t| t.with_timezone(&tz).date_naive())
        .unwrap_or_default()
}

/// The first instant of local date `date`: midnight, or when midnight
/// falls in a DST gap (as in Santiago or Beirut), the first quarter hour
/// after it. A date the zone skipped entirely (Samoa jumped over
/// 30 December 2011) starts where the next date starts.
fn start_of_day(tz: Tz, date: NaiveDate) -> i64 {
    for day in 0..3 {
        let date = date + chrono::Duration::days(day);
        let mut time = NaiveTime::MIN;
        for _ in 0..96 {
            match tz.from_local_datetime(&date.and_time(time)) {
                LocalResult::Single(t) => return t.timestamp_millis(),
                LocalResult::Ambiguous(earliest, _) => return earliest.timestamp_millis(),
                LocalResult::None => time += chrono::Duration::minutes(15),
            }
        }
    }
    // Unreachable for any zone in the database; the UTC reading of the
    // date keeps boundaries moving forward regardless.
    date.and_time(NaiveTime::MIN).and_utc().timestamp_millis()
}

/// The boundary at or before `from` where the bucket holding `from`
/// starts. Clamped to `from`, so that even a day that starts at an odd
/// moment (a zone change by seconds at midnight) covers it.
fn first_boundary(step: Step, tz: Tz, from: i64) -> i64 {
    let boundary = match step {
        Step::Clock(ms) => from - past_clock_boundary(tz, from, ms),
        Step::Days(days) => {
            let mut date = local_date(tz, from);
            if days == 7 {
                date -= chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()));
            }
            start_of_day(tz, date)
        }
        Step::Months(months) => {
            let date = local_date(tz, from);
            let index = i64::from(date.year()) * 12 + i64::from(date.month0());
            let aligned = index - index.rem_euclid(i64::from(months));
            start_of_day(tz, month_start(aligned))
        }
    };
    boundary.min(from)
}

/// The first boundary after `at`; always later than `at`, so boundary
/// lists are strictly increasing.
fn next_boundary(step: Step, tz: Tz, at: i64) -> i64 {
    match step {
        Step::Clock(ms) => {
            // One step of real time lands on a boundary unless the offset
            // changed on the way; then move to the nearest wall-clock
            // boundary that is still after `at`.
            let next = at + ms;
            let past = past_clock_boundary(tz, next, ms);
            if past == 0 {
                next
            } else if next - past > at {
                next - past
            } else {
                next + (ms - past)
            }
        }
        Step::Days(days) => {
            // Skipped dates map onto the next one, so step on until the
            // start really moves past `at`.
            let mut date = local_date(tz, at);
            for _ in 0..4 {
                date += chrono::Duration::days(i64::from(days));
                let start = start_of_day(tz, date);
                if start > at {
                    return start;
                }
            }
            at + i64::from(days) * DAY
        }
        Step::Months(months) => {
            let date = local_date(tz, at);
            let index = i64::from(date.year()) * 12 + i64::from(date.month0()) + i64::from(months);
            start_of_day(tz, month_start(index)).max(at + 1)
        }
    }
}

/// The first day of month number `index` (years × 12 + month from 0).
fn month_start(index: i64) -> NaiveDate {
    let year = i32::try_from(index.div_euclid(12)).unwrap_or(i32::MAX);
    let month = u32::try_from(index.rem_euclid(12)).unwrap_or(0) + 1;
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn at(tz: Tz, local: &str) -> i64 {
        let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").expect("date");
        tz.from_local_datetime(&naive)
            .earliest()
            .expect("exists")
            .timestamp_millis()
    }

    fn local(tz: Tz, ts: i64) -> String {
        DateTime::from_timestamp_millis(ts)
            .expect("ts")
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %:z")
            .to_string()
    }

    /// Boundaries are strictly increasing and cover the range.
    fn check_cover(bounds: &[i64], from: i64, to: i64) {
        assert!(bounds[0] <= from && *bounds.last().expect("some") > to);
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing"
        );
        assert!(bounds[..bounds.len() - 1].iter().all(|&b| b <= to));
    }

    #[test]
    fn berlin_days_across_both_dst_changes_are_one_bucket_each() {
        let tz = chrono_tz::Europe::Berlin;
        let from = at(tz, "2026-03-27 12:00");
        let to = at(tz, "2026-10-27 12:00");
        let bounds = boundaries(Step::Days(1), tz, from, to, 1000).expect("fits");
        check_cover(&bounds, from, to);
        assert!(bounds.iter().all(|&b| local(tz, b).contains(" 00:00 ")));
        // One bucket per calendar day: 27 March to 27 October inclusive.
        assert_eq!(bounds.len() - 1, 215);
        let length = |day: &str| {
            let start = at(tz, &format!("{day} 00:00"));
            let i = bounds.iter().position(|&b| b == start).expect("boundary");
            (bounds[i + 1] - bounds[i]) / HOUR
        };
        assert_eq!(length("2026-03-29"), 23);
        assert_eq!(length("2026-03-30"), 24);
        assert_eq!(length("2026-10-25"), 25);
    }

    #[test]
    fn berlin_hours_across_fall_back_keep_every_real_hour_once() {
        let tz = chrono_tz::Europe::Berlin;
        let from = at(tz, "2026-10-25 00:00");
        let to = at(tz, "2026-10-25 05:59");
        let bounds = boundaries(Step::Clock(HOUR), tz, from, to, 1000).expect("fits");
        check_cover(&bounds, from, to);
        let labels: Vec<String> = bounds.iter().map(|&b| local(tz, b)).collect();
        assert_eq!(
            labels,
            [
                "2026-10-25 00:00 +02:00",
                "2026-10-25 01:00 +02:00",
                "2026-10-25 02:00 +02:00",
                "2026-10-25 02:00 +01:00",
                "2026-10-25 03:00 +01:00",
                "2026-10-25 04:00 +01:00",
                "2026-10-25 05:00 +01:00",
                "2026-10-25 06:00 +01:00",
            ]
        );
        assert!(bounds.windows(2).all(|w| w[1] - w[0] == HOUR));
    }

    #[test]
    fn new_york_six_hour_buckets_stay_on_the_local_clock_through_spring_forward() {
        let tz = chrono_tz::America::New_York;
        let from = at(tz, "2026-03-07 00:00");
        let to = at(tz, "2026-03-09 23:00");
        let bounds = boundaries(Step::Clock(6 * HOUR), tz, from, to, 1000).expect("fits");
        check_cover(&bounds, from, to);
        for &b in &bounds {
            let label = local(tz, b);
            assert!(
                ["00:00", "06:00", "12:00", "18:00"]
                    .iter()
                    .any(|h| label.contains(&format!(" {h} "))),
                "{label} is not on a 6-hour mark"
            );
        }
        // 3 days of 4 buckets; the one holding 02:00 on 8 March is 5 hours.
        assert_eq!(bounds.len() - 1, 12);
        let short = at(tz, "2026-03-08 00:00");
        let i = bounds.iter().position(|&b| b == short).expect("boundary");
        assert_eq!(bounds[i + 1] - bounds[i], 5 * HOUR);
    }

    #[test]
    fn new_york_fall_back_day_is_25_hours_and_no_label_repeats() {
        let tz = chrono_tz::America::New_York;
        let from = at(tz, "2026-10-31 00:00");
        let to = at(tz, "2026-11-02 00:00");
        let bounds = boundaries(Step::Clock(12 * HOUR), tz, from, to, 1000).expect("fits");
        check_cover(&bounds, from, to);
        let labels: Vec<String> = bounds.iter().map(|&b| local(tz, b)).collect();
        let mut unique = labels.clone();
        unique.dedup();
        assert_eq!(labels, unique);
        let days = boundaries(Step::Days(1), tz, from, to, 1000).expect("fits");
        assert_eq!(days[2] - days[1], 25 * HOUR, "1 November 2026");
    }

    #[test]
    fn half_and_quarter_hour_zones_align_on_their_own_midnight() {
        for (name, offset_minutes) in [("Asia/Kolkata", 330), ("Asia/Kathmandu", 345)] {
            let tz: Tz = name.parse().expect("zone");
            let from = at(tz, "2026-01-10 07:20");
            let (step, bounds) = plan(tz, from, from + 30 * DAY, 40, 0);
            assert_eq!(step, Step::Days(1));
            assert!(bounds.iter().all(|&b| local(tz, b).contains(" 00:00 ")));
            // Local midnight is a whole number of 15-minute UTC buckets, so
            // the coarse rollup can serve it.
            assert!(bounds.iter().all(|&b| b.rem_euclid(15 * MINUTE) == 0));
            assert_eq!(
                (bounds[0] + offset_minutes * MINUTE).rem_euclid(DAY),
                0,
                "{name}"
            );
        }
    }

    #[test]
    fn plans_pick_the_finest_round_step_within_the_budget() {
        let tz = chrono_tz::UTC;
        let t0 = 1_767_225_600_000; // 2026-01-01 00:00 UTC
        let cases = [
            (HOUR, Step::Clock(5 * SECOND)),
            (DAY, Step::Clock(2 * MINUTE)),
            (30 * DAY, Step::Clock(HOUR)),
            (365 * DAY, Step::Clock(12 * HOUR)),
        ];
        for (span, want) in cases {
            let (step, bounds) = plan(tz, t0, t0 + span - 1, 1000, 0);
            assert_eq!(step, want, "span {span}");
            assert!(bounds.len() - 1 <= 1000);
            check_cover(&bounds, t0, t0 + span - 1);
        }
        // A century in ten buckets at most.
        let (step, bounds) = plan(tz, t0, t0 + 100 * 366 * DAY, 10, 0);
        assert!(bounds.len() - 1 <= 10, "{step:?}");
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let tz = chrono_tz::Europe::Berlin;
        let from = at(tz, "2026-06-17 15:00"); // a Wednesday
        let weeks = boundaries(Step::Days(7), tz, from, from + 20 * DAY, 100).expect("fits");
        assert_eq!(local(tz, weeks[0]), "2026-06-15 00:00 +02:00");
        let quarters = boundaries(Step::Months(3), tz, from, from + 200 * DAY, 100).expect("fits");
        let labels: Vec<String> = quarters.iter().map(|&b| local(tz, b)).collect();
        assert_eq!(
            labels,
            [
                "2026-04-01 00:00 +02:00",
                "2026-07-01 00:00 +02:00",
                "2026-10-01 00:00 +02:00",
                "2027-01-01 00:00 +01:00",
                "2027-04-01 00:00 +02:00",
            ]
        );
    }

    #[test]
    fn a_skipped_date_is_no_bucket_and_the_days_around_it_are_whole() {
        // Samoa moved across the date line: 29 December 2011 was followed
        // by 31 December.
        let tz = chrono_tz::Pacific::Apia;
        let from = at(tz, "2011-12-27 12:00");
        let to = at(tz, "2012-01-02 12:00");
        let bounds = boundaries(Step::Days(1), tz, from, to, 100).expect("fits");
        check_cover(&bounds, from, to);
        let labels: Vec<String> = bounds
            .iter()
            .map(|&b| local(tz, b)[..10].to_owned())
            .collect();
        assert_eq!(
            labels,
            [
                "2011-12-27",
                "2011-12-28",
                "2011-12-29",
                "2011-12-31",
                "2012-01-01",
                "2012-01-02",
                "2012-01-03"
            ]
        );
        let (step, _) = plan(tz, from, to, 10, 0);
        assert_eq!(step, Step::Days(1));
    }

    #[test]
    fn the_extremes_of_the_accepted_range_terminate() {
        let (_, bounds) = plan(chrono_tz::Pacific::Chatham, MIN_TS, MAX_TS, 1000, 0);
        check_cover(&bounds, MIN_TS, MAX_TS);
        assert!(bounds.len() - 1 <= 1000);
        let (_, bounds) = plan(chrono_tz::UTC, 5, 5, 1, 0);
        check_cover(&bounds, 5, 5);
    }
}
