//! What a benchmark run measured, and the report `sightline bench` prints.

use std::path::PathBuf;

use app::model::Counters;
use rumqttc::QoS;

use super::BenchOptions;
use crate::simulate::READINGS_PER_MESSAGE;

/// What a run measured.
#[derive(Debug, Default)]
pub struct BenchReport {
    pub sent_readings: u64,
    /// Messages the broker acknowledged (QoS 1 only).
    pub acked_messages: u64,
    pub send_seconds: f64,
    /// Rows counted in the database after the server stopped.
    pub persisted: u64,
    /// From the first publish to the last commit.
    pub persist_seconds: f64,
    /// Readings stored per second in each second of the publishing window
    /// but the first, from the server's counter.
    pub per_second: Vec<u64>,
    pub counters: Counters,
    /// Publish-to-WebSocket latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub lag_notices: u64,
    /// Viewers whose socket opened and took their subscription.
    pub viewers_connected: u64,
    pub peak_rss_bytes: u64,
    pub idle_held: u64,
    pub server_connections: Option<u64>,
    /// The server's own view of the push latency (from ingest receiving a
    /// message to its frame being written): the histogram bucket bounds,
    /// in seconds, under which 50 % and 99 % of readings fall.
    pub server_push: Option<(f64, f64)>,
    /// Readings a service account subscribed to `sensor/#` received.
    pub feed_received: Option<u64>,
    /// Where the database and server log were kept, with `--keep`.
    pub kept: Option<PathBuf>,
}

impl BenchReport {
    fn percentile(&self, p: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        Some(self.latencies_us[i] as f64 / 1000.0)
    }

    pub(crate) fn median_per_second(&self) -> (u64, u64) {
        let mut steady = self.per_second.clone();
        steady.sort_unstable();
        let median = steady.get(steady.len() / 2).copied().unwrap_or(0);
        let min = steady.first().copied().unwrap_or(0);
        (median, min)
    }

    /// The report as printed, one figure per line.
    pub fn render(&self, opts: &BenchOptions) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let qos = if opts.qos == QoS::AtLeastOnce { 1 } else { 0 };
        line(format!(
            "scenario            {:?}, QoS {qos}",
            opts.scenario
        ));
        line(format!(
            "load                {} devices x {:.2} msg/s x {} readings = {:.0} readings/s offered, {} s; {} idle connections; {} viewers{}",
            opts.devices,
            opts.rate,
            READINGS_PER_MESSAGE,
            opts.offered_per_sec(),
            opts.seconds,
            opts.idle,
            opts.viewers,
            match (opts.viewers, opts.watch) {
                (0, _) => String::new(),
                (_, 0) => " watching all devices".into(),
                (_, n) => format!(" watching {n} devices each"),
            }
        ));
        line(format!(
            "sent                {} readings in {:.1} s ({:.0}/s){}",
            self.sent_readings,
            self.send_seconds,
            self.sent_readings as f64 / self.send_seconds.max(1e-9),
            if qos == 1 {
                format!("; {} messages acknowledged", self.acked_messages)
            } else {
                String::new()
            }
        ));
        let (median, min) = self.median_per_second();
        line(format!(
            "persisted           {} readings in the database, {:.0} readings/s from first publish to last commit; steady seconds: median {median}/s, min {min}/s",
            self.persisted,
            self.persisted as f64 / self.persist_seconds.max(1e-9),
        ));
        let c = &self.counters;
        line(format!(
            "server counters     messages {}, received {}, stored {}, dropped {}, rejected {}, refused at edge {}",
            c.messages, c.received, c.stored, c.dropped, c.rejected, c.refused
        ));
        line(format!(
            "unaccounted         {} readings (sent - stored - dropped - rejected)",
            self.sent_readings as i64 - c.stored as i64 - c.dropped as i64 - c.rejected as i64
        ));
        match (
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.percentile(1.0),
        ) {
            (Some(p50), Some(p90), Some(p99), Some(max)) => line(format!(
                "publish->websocket  {} samples: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; lag notices {}; {} of {} viewers connected{}",
                self.latencies_us.len(),
                self.lag_notices,
                self.viewers_connected,
                opts.viewers,
                if opts.nginx.is_some() { " through nginx" } else { "" }
            )),
            _ => line("publish->websocket  no viewers in this scenario".into()),
        }
        if let (Some((p50, p99)), true) = (self.server_push, opts.viewers > 0) {
            line(format!(
                "server receive->push  p50 <= {:.2} ms, p99 <= {:.2} ms (bucket bounds of sightline_push_latency_seconds)",
                p50 * 1000.0,
                p99 * 1000.0
            ));
        }
        line(format!(
            "server peak RSS     {:.0} MB",
            self.peak_rss_bytes as f64 / 1e6
        ));
        if let Some(dir) = &self.kept {
            line(format!("kept                {}", dir.display()));
        }
        if opts.idle > 0 {
            line(format!(
                "connections         {} idle held + {} publishing; the server counted at most {}",
                self.idle_held,
                opts.devices,
                self.server_connections
                    .map_or_else(|| "unknown".into(), |n| n.to_string())
            ));
        }
        out
    }
}
