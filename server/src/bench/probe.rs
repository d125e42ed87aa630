//! Watching the server under load from outside: its counters, its
//! Prometheus text, the readings it stores each second, and its memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use app::model::Counters;
use tokio_util::sync::CancellationToken;

use super::get_json;

pub(super) async fn metrics_text(client: &reqwest::Client, http: SocketAddr) -> Option<String> {
    client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// One unlabelled gauge or counter from `/metrics`.
pub(super) async fn metric(client: &reqwest::Client, http: SocketAddr, name: &str) -> Option<u64> {
    crate::metrics::read_value(&metrics_text(client, http).await?, name)
}

/// Reads the push-latency histogram and returns the bucket bounds that
/// hold 50 % and 99 % of its observations.
pub(super) async fn push_quantiles(
    client: &reqwest::Client,
    http: SocketAddr,
) -> Option<(f64, f64)> {
    let text = metrics_text(client, http).await?;
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("sightline_push_latency_seconds_bucket{le=\"")?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    let under = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n as f64 >= q * total as f64)
            .map(|(b, _)| *b)
    };
    Some((under(0.5)?, under(0.99)?))
}

pub(super) async fn wait_connections(client: &reqwest::Client, http: SocketAddr, want: u64) {
    for _ in 0..600 {
        if metric(client, http, "sightline_devices_connected").await >= Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the sampler saw during the run.
#[derive(Debug, Default)]
pub(super) struct Samples {
    /// The server's stored counter, every [`SAMPLE_EVERY`].
    pub(super) stored: Vec<(Instant, u64)>,
    /// The most MQTT connections the server reported at any sample.
    pub(super) most_connections: Option<u64>,
}

/// Samples the server's counters every 100 ms.
/// In a cluster the stored counters and connections of every instance
/// are added up.
pub(super) async fn sample(
    client: reqwest::Client,
    https: Vec<SocketAddr>,
    stop: CancellationToken,
) -> Samples {
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(stored) = stored_everywhere(&client, &https).await {
            samples.stored.push((Instant::now(), stored));
        }
        // Counting connections reads the kernel's socket table; once a
        // second is enough, and keeps the sampler from loading the server.
        ticks += 1;
        if ticks % 10 == 1 {
            let mut total = None;
            for &http in &https {
                if let Some(n) = metric(&client, http, "sightline_devices_connected").await {
                    total = Some(total.unwrap_or(0) + n);
                }
            }
            if let Some(n) = total {
                samples.most_connections = Some(samples.most_connections.unwrap_or(0).max(n));
            }
        }
    }
    samples
}

/// How often the sampler reads the server's counters.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Readings stored per second, over one-second windows that lie inside
/// the publishing window, leaving out its first second (ramp-up).
pub(super) fn steady_rates(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Vec<u64> {
    let per_window = (Duration::from_secs(1).as_millis() / SAMPLE_EVERY.as_millis()) as usize;
    let from = from + Duration::from_secs(1);
    let inside: Vec<&(Instant, u64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    inside
        .iter()
        .step_by(per_window.max(1))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| {
            let secs = w[1].0.duration_since(w[0].0).as_secs_f64().max(1e-3);
            (w[1].1.saturating_sub(w[0].1) as f64 / secs) as u64
        })
        .collect()
}

/// Polls the stored counter until it has not moved for a second, adding
/// each reading to `samples`, and returns its final value.
pub(super) async fn settle(
    client: &reqwest::Client,
    https: &[SocketAddr],
    samples: &mut Vec<(Instant, u64)>,
) -> u64 {
    let mut last = Instant::now();
    let mut prev = 0;
    while last.elapsed() < Duration::from_secs(1) {
        if let Some(stored) = stored_everywhere(client, https).await {
            samples.push((Instant::now(), stored));
            if stored != prev {
                prev = stored;
                last = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    prev
}

/// The stored counters of every instance, added up; `None` if one did
/// not answer.
async fn stored_everywhere(client: &reqwest::Client, https: &[SocketAddr]) -> Option<u64> {
    let mut total = 0;
    for &http in https {
        total += get_json::<Counters>(client, http, "/api/stats")
            .await
            .ok()?
            .stored;
    }
    Some(total)
}

/// When the stored counter first reached `stored`: the last commit, to
/// within one sample.
pub(super) fn last_commit(samples: &[(Instant, u64)], stored: u64) -> Option<Instant> {
    samples.iter().find(|(_, n)| *n >= stored).map(|(t, _)| *t)
}

/// The peak resident set of a process, from `/proc/PID/status`.
pub(super) fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// The current resident set of a process, from `/proc/PID/status`.
pub(super) fn rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A size in bytes from the `field` line (in kB) of `/proc/PID/status`.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
