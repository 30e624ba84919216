//! The connection to the scheduler: gRPC over mutual TLS with the bundle in
//! `--tls-dir`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use devctl_proto::{
    pb::{
        container_service_client::ContainerServiceClient, event_service_client::EventServiceClient,
        exec_service_client::ExecServiceClient, log_service_client::LogServiceClient,
        node_service_client::NodeServiceClient, stats_service_client::StatsServiceClient,
    },
    pki::Bundle,
};
use tonic::transport::{Channel, Endpoint};

/// Clients of the scheduler's services over one channel.
#[derive(Debug, Clone)]
pub struct Client {
    /// ContainerService.
    pub containers: ContainerServiceClient<Channel>,
    /// NodeService.
    pub nodes: NodeServiceClient<Channel>,
    /// EventService.
    pub events: EventServiceClient<Channel>,
    /// LogService.
    pub logs: LogServiceClient<Channel>,
    /// StatsService.
    pub stats: StatsServiceClient<Channel>,
    /// ExecService.
    pub exec: ExecServiceClient<Channel>,
}

/// The bundle directory: `--tls-dir`, else `~/.config/devctl/tls` if it
/// exists.
pub fn tls_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let default = PathBuf::from(home).join(".config/devctl/tls");
        if default.join("cert.pem").exists() {
            return Ok(default);
        }
    }
    bail!(
        "no client certificate: pass --tls-dir DIR or set DEVCTL_TLS_DIR to a directory holding ca.pem, cert.pem and key.pem (e.g. DATA_DIR/clients/admin)"
    )
}

impl Client {
    /// Connects to `server` (an `https://` URL) with the bundle in `tls_dir`.
    pub async fn connect(server: &str, tls_dir: PathBuf) -> Result<Self> {
        devctl_proto::pki::install_crypto_provider();
        if !server.starts_with("https://") {
            bail!("--server {server:?}: must be an https:// URL (the API is only served over TLS)");
        }
        let bundle = Bundle::load(&tls_dir)
            .with_context(|| format!("loading the client bundle from {}", tls_dir.display()))?;
        let channel = Endpoint::from_shared(server.to_string())
            .with_context(|| format!("--server {server:?} is not a URL"))?
            .tls_config(bundle.client_tls())
            .context("TLS configuration")?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot reach the scheduler at {server}"))?;
        Ok(Self {
            containers: ContainerServiceClient::new(channel.clone()),
            nodes: NodeServiceClient::new(channel.clone()),
            events: EventServiceClient::new(channel.clone()),
            logs: LogServiceClient::new(channel.clone()),
            stats: StatsServiceClient::new(channel.clone()),
            exec: ExecServiceClient::new(channel),
        })
    }
}
