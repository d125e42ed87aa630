//! `sightline bench --scenario feed` (issue 19): the 1,000-device QoS 1
//! throughput run, in turns without and with a service account subscribed
//! to `sensor/#` at QoS 1, in the same session. It prints readings stored
//! per second for each run, the medians, their ratio, and whether the
//! subscriber received every stored reading (kept up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use super::{BenchOptions, Scenario};

/// Pairs of runs (without, then with the subscriber).
const ROUNDS: usize = 3;

/// The service account the subscriber logs in as.
const ACCOUNT: &str = "bench-feed";

pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let mut out =
        String::from("run  subscriber  stored/s (median of steady seconds)  received/stored\n");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut all_kept_up = true;
    for round in 1..=ROUNDS {
        for subscribed in [false, true] {
            let o = BenchOptions {
                scenario: Scenario::Throughput,
                feed_subscriber: subscribed,
                ..opts.clone()
            };
            let report = super::run(&o).await?;
            let (median, _) = report.median_per_second();
            let kept = match report.feed_received {
                Some(received) => {
                    all_kept_up &= received == report.persisted;
                    format!("{received}/{}", report.persisted)
                }
                None => "-".into(),
            };
            out.push_str(&format!(
                "{round:<4} {:<11} {median:>10}                           {kept}\n",
                if subscribed { "yes" } else { "no" }
            ));
            if subscribed {
                with.push(median);
            } else {
                without.push(median);
            }
        }
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    out.push_str(&format!(
        "median without      {a}/s\nmedian with         {b}/s\nwith / without      {:.3} (target: at least 0.85)\nsubscriber kept up  {}\n",
        b as f64 / a.max(1) as f64,
        if all_kept_up { "yes: every stored reading received" } else { "NO" },
    ));
    Ok(out)
}

/// A service-account subscriber on `sensor/#` at QoS 1 that counts the
/// readings it receives. Returns once the server granted the subscription.
pub(super) async fn subscribe(
    db_url: &str,
    mqtt: std::net::SocketAddr,
) -> anyhow::Result<(Arc<AtomicU64>, JoinHandle<()>)> {
    let store = crate::store::Store::open(db_url).await?;
    let made = store
        .add_service_account(
            ACCOUNT,
            &crate::store::services::Grants {
                subscribe: vec!["sensor/#".to_owned()],
                publish: Vec::new(),
            },
            "bench",
            crate::clock::now_ms(),
        )
        .await
        .context("cannot make the bench's service account")?;
    let mut options =
        MqttOptions::new(format!("{ACCOUNT}-sub"), mqtt.ip().to_string(), mqtt.port());
    options.set_credentials(ACCOUNT, made.secret);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 10_000);
    client.subscribe("sensor/#", QoS::AtLeastOnce).await?;
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let (granted_tx, granted) = tokio::sync::oneshot::channel();
    let mut granted_tx = Some(granted_tx);
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let n = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["readings"].as_array().map(Vec::len))
                        .unwrap_or(0);
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = granted_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), granted)
        .await
        .context("the feed subscription was not granted in time")??;
    Ok((received, task))
}
