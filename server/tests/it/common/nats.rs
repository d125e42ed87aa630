//! A NATS core cluster of a test's own: Debian's `nats-server`, one process
//! per node on free loopback ports, routed to each other. A node can be
//! killed with SIGKILL, the way a crash would end it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/sbin/nats-server";

pub struct NatsCluster {
    /// Each node's client URL, in node order.
    pub urls: Vec<String>,
    nodes: Vec<Option<Child>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl NatsCluster {
    /// Starts `n` routed nodes and waits until each accepts clients.
    /// Without `nats-server` the test is skipped, unless
    /// `SIGHTLINE_REQUIRE_NATS=1`, when it fails.
    pub fn start(n: usize) -> Option<Self> {
        if !Path::new(BINARY).exists() {
            assert!(
                std::env::var("SIGHTLINE_REQUIRE_NATS").as_deref() != Ok("1"),
                "SIGHTLINE_REQUIRE_NATS=1 but {BINARY} is not installed"
            );
            eprintln!("skipped: {BINARY} is not installed");
            return None;
        }
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..n)
            .map(|i| {
                Some(
                    Command::new(BINARY)
                        .args(["-a", "127.0.0.1", "-p", &client_ports[i].to_string()])
                        .args(["--name", &format!("test-node-{i}")])
                        .args(["--cluster_name", "sightline-test"])
                        .args(["--cluster", &format!("nats://127.0.0.1:{}", route_ports[i])])
                        .args(["--routes", &routes])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start nats-server"),
                )
            })
            .collect();
        let cluster = Self {
            urls: client_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            nodes,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in client_ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nats-server on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(cluster)
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
