//! The connection to the scheduler: gRPC over TLS, authenticated by a
//! client certificate (mutual TLS) or an API token.
//!
//! Where the server and credentials come from, first match wins:
//! - server: `--server`/`DEVCTL_SERVER`, the context's, `https://127.0.0.1:7443`;
//! - an API token: `--api-token`/`DEVCTL_API_TOKEN` (the CA from `--ca-file`, or
//!   the certificate directory's ca.pem);
//! - a certificate directory: `--tls-dir`/`DEVCTL_TLS_DIR`, the context's,
//!   `~/.config/devctl/tls`.
//!
//! The context is `--context`/`DEVCTL_CONTEXT`, else the configuration
//! file's current one (see [`crate::config`]).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use devctl_proto::{
    pb::{
        container_service_client::ContainerServiceClient,
        enroll_service_client::EnrollServiceClient, event_service_client::EventServiceClient,
        exec_service_client::ExecServiceClient, log_service_client::LogServiceClient,
        node_service_client::NodeServiceClient, stats_service_client::StatsServiceClient,
        token_service_client::TokenServiceClient,
    },
    pki::Bundle,
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::config::ConfigFile;

/// The default scheduler URL.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7443";

/// Adds the API token, if any, to every call.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to the scheduler with the caller's credentials.
pub type Svc = InterceptedService<Channel, Bearer>;

/// Clients of the scheduler's services over one channel.
#[derive(Debug, Clone)]
pub struct Client {
    /// ContainerService.
    pub containers: ContainerServiceClient<Svc>,
    /// NodeService.
    pub nodes: NodeServiceClient<Svc>,
    /// EventService.
    pub events: EventServiceClient<Svc>,
    /// LogService.
    pub logs: LogServiceClient<Svc>,
    /// StatsService.
    pub stats: StatsServiceClient<Svc>,
    /// ExecService.
    pub exec: ExecServiceClient<Svc>,
    /// TokenService.
    pub tokens: TokenServiceClient<Svc>,
    /// EnrollService (certificate renewal).
    pub enroll: EnrollServiceClient<Svc>,
    /// AuditService.
    pub audit: devctl_proto::pb::audit_service_client::AuditServiceClient<Svc>,
    /// WatchService (the change feed).
    pub watch: devctl_proto::pb::watch_service_client::WatchServiceClient<Svc>,
    /// SshService (the SSH CA).
    pub ssh: devctl_proto::pb::ssh_service_client::SshServiceClient<Svc>,
    /// TunnelService (ssh and port-forward bytes).
    pub tunnel: devctl_proto::pb::tunnel_service_client::TunnelServiceClient<Svc>,
    /// BuildService (image builds).
    pub build: devctl_proto::pb::build_service_client::BuildServiceClient<Svc>,
    /// TemplateService.
    pub templates: devctl_proto::pb::template_service_client::TemplateServiceClient<Svc>,
    /// WorkspaceService.
    pub workspaces: devctl_proto::pb::workspace_service_client::WorkspaceServiceClient<Svc>,
    /// RegistryService (registry credentials).
    pub registries: devctl_proto::pb::registry_service_client::RegistryServiceClient<Svc>,
    /// ImageService (images on the nodes).
    pub images: devctl_proto::pb::image_service_client::ImageServiceClient<Svc>,
    /// GraphService (the graph projection and analytics).
    pub graph: devctl_proto::pb::graph_service_client::GraphServiceClient<Svc>,
}

/// How the CLI authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A certificate bundle directory.
    Certificate(PathBuf),
    /// An API token, trusting the CA in `ca_file`.
    Token {
        /// The secret.
        token: String,
        /// The cluster CA certificate.
        ca_file: PathBuf,
    },
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The scheduler's URL.
    pub server: String,
    /// The credentials.
    pub credentials: Credentials,
    /// The context used, if any.
    pub context: Option<String>,
}

/// The global flags that choose the target.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--server`.
    pub server: Option<String>,
    /// `--tls-dir`.
    pub tls_dir: Option<PathBuf>,
    /// `--token`.
    pub token: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
}

/// Resolves the flags against the configuration file.
pub fn resolve(flags: Flags) -> Result<Target> {
    let file = ConfigFile::load(&crate::config::config_path()?)?;
    let ctx = file.context(flags.context.as_deref())?;
    let server = flags
        .server
        .or_else(|| ctx.map(|(_, c)| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let tls_dir = flags
        .tls_dir
        .or_else(|| ctx.map(|(_, c)| c.tls_dir.clone()))
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let legacy = PathBuf::from(home).join(".config/devctl/tls");
            legacy.join("cert.pem").exists().then_some(legacy)
        });
    let credentials = match (flags.token, tls_dir) {
        (Some(token), dir) => {
            let ca_file = flags
                .ca_file
                .or_else(|| dir.map(|d| d.join(devctl_proto::pki::CA_FILE)))
                .context(
                    "--api-token needs the cluster CA to check the scheduler: pass --ca-file FILE (ca.pem) or set DEVCTL_CA_FILE",
                )?;
            Credentials::Token { token, ca_file }
        }
        (None, Some(dir)) => Credentials::Certificate(dir),
        (None, None) => bail!(
            "no credentials: run `devctl login --server URL --token JOIN_TOKEN`, pass --tls-dir DIR (a directory holding ca.pem, cert.pem and key.pem, e.g. DATA_DIR/clients/admin), or pass --api-token with an API token"
        ),
    };
    Ok(Target {
        server,
        credentials,
        context: ctx.map(|(n, _)| n.to_string()),
    })
}

impl Client {
    /// Connects to the target.
    pub async fn connect(target: &Target) -> Result<Self> {
        devctl_proto::pki::install_crypto_provider();
        let server = &target.server;
        if !server.starts_with("https://") {
            bail!("--server {server:?}: must be an https:// URL (the API is only served over TLS)");
        }
        let (tls, bearer) = match &target.credentials {
            Credentials::Certificate(dir) => {
                let bundle = Bundle::load(dir)
                    .with_context(|| format!("loading the client bundle from {}", dir.display()))?;
                (bundle.client_tls(), Bearer::default())
            }
            Credentials::Token { token, ca_file } => {
                let ca = std::fs::read_to_string(ca_file)
                    .with_context(|| format!("reading the cluster CA {}", ca_file.display()))?;
                let value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
                    .parse()
                    .context("--api-token: not a valid token (dvt_...)")?;
                (Bundle::anonymous_client_tls(&ca), Bearer(Some(value)))
            }
        };
        let channel = Endpoint::from_shared(server.to_string())
            .with_context(|| format!("--server {server:?} is not a URL"))?
            .tls_config(tls)
            .context("TLS configuration")?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot reach the scheduler at {server}"))?;
        let svc = InterceptedService::new(channel, bearer);
        Ok(Self {
            containers: ContainerServiceClient::new(svc.clone()),
            nodes: NodeServiceClient::new(svc.clone()),
            events: EventServiceClient::new(svc.clone()),
            logs: LogServiceClient::new(svc.clone()),
            stats: StatsServiceClient::new(svc.clone()),
            exec: ExecServiceClient::new(svc.clone()),
            tokens: TokenServiceClient::new(svc.clone()),
            enroll: EnrollServiceClient::new(svc.clone()),
            audit: devctl_proto::pb::audit_service_client::AuditServiceClient::new(svc.clone()),
            watch: devctl_proto::pb::watch_service_client::WatchServiceClient::new(svc.clone()),
            ssh: devctl_proto::pb::ssh_service_client::SshServiceClient::new(svc.clone()),
            tunnel: devctl_proto::pb::tunnel_service_client::TunnelServiceClient::new(svc.clone()),
            build: devctl_proto::pb::build_service_client::BuildServiceClient::new(svc.clone())
                .max_decoding_message_size(devctl_proto::validate::limits::MAX_MESSAGE_BYTES),
            templates: devctl_proto::pb::template_service_client::TemplateServiceClient::new(
                svc.clone(),
            ),
            workspaces: devctl_proto::pb::workspace_service_client::WorkspaceServiceClient::new(
                svc.clone(),
            ),
            registries: devctl_proto::pb::registry_service_client::RegistryServiceClient::new(
                svc.clone(),
            ),
            images: devctl_proto::pb::image_service_client::ImageServiceClient::new(svc.clone()),
            graph: devctl_proto::pb::graph_service_client::GraphServiceClient::new(svc),
        })
    }
}
