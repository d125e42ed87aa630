//! nginx between the bench's viewers and its instances, configured from
//! the same template (`deploy/nginx.conf`) that `scripts/cluster.sh` fills
//! in, so the figure is the one a deployment behind nginx would see.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::free_addr;

/// A running nginx and the address browsers reach it on.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
}

/// Writes `template` with `dir` for its files, a free loopback port for
/// browsers and `upstreams` as its servers, starts nginx in the
/// foreground and waits until it answers `/api/health`.
pub async fn start(template: &Path, dir: &Path, upstreams: &[SocketAddr]) -> anyhow::Result<Nginx> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    let addr = free_addr()?;
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let config = text
        .lines()
        .map(|l| {
            if l == "@HTTP_SERVERS@" {
                servers.clone()
            } else {
                let l = l
                    .replace("@RUN@", &dir.to_string_lossy())
                    .replace("@HTTP_BIND@", &addr.to_string());
                format!("{l}\n")
            }
        })
        .collect::<String>();
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join("nginx.log"))?;
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start nginx (apt-get install nginx-light)")?;
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("http://{addr}/api/health")).send().await {
            if r.status().is_success() {
                return Ok(Nginx { child, addr });
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("nginx exited with {status}; see nginx.log in the run's folder");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nginx did not answer on {addr} within 5 s")
}

impl Nginx {
    /// Stops nginx with SIGTERM, which also ends its workers; a SIGKILL
    /// to the master alone would leave them holding the port.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
