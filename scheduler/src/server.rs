//! `devctl-scheduler serve`: wires the store, the node registry, the bus and
//! the gRPC API together and runs them until shutdown.

use std::{future::Future, net::SocketAddr, time::Duration};

use devctl_proto::pb::{
    self, container_service_server::ContainerServiceServer,
    image_service_server::ImageServiceServer, node_service_server::NodeServiceServer,
};
use devctl_proto::pb::{
    event_service_server::EventServiceServer, exec_service_server::ExecServiceServer,
    log_service_server::LogServiceServer, ssh_service_server::SshServiceServer,
    stats_service_server::StatsServiceServer, tunnel_service_server::TunnelServiceServer,
};
use devctl_proto::validate::limits::MAX_MESSAGE_BYTES;
use thiserror::Error;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Server, server::TcpIncoming};

use crate::api::registry::RegistryApi;
use crate::{
    api::audit::AuditApi,
    audit::{AuditLayer, AuditWriter},
    ratelimit::RateLimiter,
};
use crate::{
    api::{
        StreamApi,
        auth::Authenticator,
        containers::ContainerApi,
        enroll::{CertPolicy, EnrollApi},
        images::ImageApi,
        nodes::NodeApi,
        ssh::SshApi,
        tokens::TokenApi,
        watch::WatchApi,
    },
    bus::{Bus, BusError, Heartbeats, StatsReports},
    cluster::{Cluster, Settings},
    datadir::{DataDir, DataDirError},
    nodes::Registry,
    revocation::Revocations,
    store::{Store, StoreError},
    tokens::ApiTokens,
};
use devctl_proto::identity::Identity;
use devctl_proto::pb::audit_service_server::AuditServiceServer;
use devctl_proto::pb::build_service_server::BuildServiceServer;
use devctl_proto::pb::graph_service_server::GraphServiceServer;
use devctl_proto::pb::registry_service_server::RegistryServiceServer;
use devctl_proto::pb::template_service_server::TemplateServiceServer;
use devctl_proto::pb::watch_service_server::WatchServiceServer;
use devctl_proto::pb::workspace_service_server::WorkspaceServiceServer;
use devctl_proto::pb::{
    enroll_service_server::EnrollServiceServer, token_service_server::TokenServiceServer,
};

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory (certificates, store).
    pub data_dir: DataDir,
    /// Address to listen on; port 0 picks a free port (written to
    /// `DIR/scheduler.addr`).
    pub listen: SocketAddr,
    /// NATS URL.
    pub nats: String,
    /// A node without a heartbeat for this long is down.
    pub node_timeout: Duration,
    /// Caps on the capacity placement counts for a node.
    pub node_caps: crate::nodes::Caps,
    /// Container operation settings.
    pub settings: Settings,
    /// How long events are kept.
    pub event_retention: Duration,
    /// How long audit log entries are kept.
    pub audit_retention: Duration,
    /// Most bytes the audit log keeps (oldest entries go first); 0: no cap.
    pub audit_max_bytes: i64,
    /// Most bytes of pushed image archives kept; 0: pushes off.
    pub image_store_bytes: u64,
    /// The per-identity rate limit of API calls; `None`: unlimited.
    pub rate_limit: Option<crate::ratelimit::Limit>,
    /// The limit per source address on calls without usable credentials,
    /// if any.
    pub anonymous_rate_limit: Option<crate::ratelimit::Limit>,
    /// Streams one identity may have open at once; 0: no cap.
    pub max_streams_per_identity: usize,
    /// Validity of the certificates it signs.
    pub certs: CertPolicy,
    /// The graph to project the cluster into, if any.
    pub graph: Option<crate::graph::GraphConfig>,
}

/// Why the scheduler could not serve.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Data directory problems.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Listening or serving failed.
    #[error("serving: {0}")]
    Transport(String),
    /// A file could not be written.
    #[error("{0}")]
    Io(String),
}

/// Serves until `shutdown` resolves, then finishes calls in flight, stops
/// background work and returns.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let bundle = config.data_dir.server_bundle()?;
    let store = Store::open(&config.data_dir.state_file())?;
    let api_tokens = ApiTokens::load(&store)?;
    crate::api::enroll::import_identities(&config.data_dir, &store, &api_tokens).await?;
    let auth = Authenticator::new(
        api_tokens,
        Revocations::open(config.data_dir.revoked_file()),
    )
    .with_stream_cap(config.max_streams_per_identity);
    let ca = devctl_proto::pki::ClusterCa::load(&config.data_dir.ca_dir())
        .map_err(DataDirError::from)?;
    let (ssh_ca, ssh_ca_created) = config.data_dir.ssh_ca()?;
    if ssh_ca_created {
        tracing::info!(path = %config.data_dir.ssh_ca_file().display(), "this data directory had no SSH CA (made before SSH access): created one");
    }
    tracing::info!(fingerprint = %ssh_ca.fingerprint(), "SSH CA loaded");
    let enroll = EnrollApi::new(
        config.data_dir.clone(),
        ca,
        store.clone(),
        auth.clone(),
        config.certs,
    )
    .map_err(DataDirError::from)?;
    let tokens = TokenApi::new(store.clone(), auth.clone());
    config.data_dir.ensure_bus()?;
    config.data_dir.refresh_bus_users()?;
    let bus = Bus::connect(&config.nats, &config.data_dir.bus_dir()).await?;
    let heartbeats = bus.heartbeats().await?;
    bus.ensure_streams(config.event_retention).await?;
    bus.ensure_audit_stream(config.audit_retention, config.audit_max_bytes)
        .await?;
    let engine_events = bus.engine_events().await?;
    let stats_reports = bus.stats_reports().await?;
    let renew_requests = bus.renew_requests().await?;
    // Once heartbeats are received: known nodes are unknown (not down)
    // for one node timeout from now.
    let registry = Registry::new(store.nodes()?, config.node_timeout, config.node_caps);
    let cluster = Cluster::new(
        store.clone(),
        registry,
        bus.clone(),
        config.settings.clone(),
        ssh_ca,
    );
    cluster.recover_moves().await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ContainerServiceServer<ContainerApi>>()
        .await;
    health.set_serving::<NodeServiceServer<NodeApi>>().await;
    health.set_serving::<ImageServiceServer<ImageApi>>().await;
    health.set_serving::<EventServiceServer<StreamApi>>().await;
    health.set_serving::<LogServiceServer<StreamApi>>().await;
    health.set_serving::<StatsServiceServer<StreamApi>>().await;
    health.set_serving::<ExecServiceServer<StreamApi>>().await;
    health.set_serving::<TunnelServiceServer<StreamApi>>().await;
    health.set_serving::<SshServiceServer<SshApi>>().await;
    health.set_serving::<EnrollServiceServer<EnrollApi>>().await;
    health.set_serving::<TokenServiceServer<TokenApi>>().await;
    health.set_serving::<AuditServiceServer<AuditApi>>().await;
    health.set_serving::<WatchServiceServer<WatchApi>>().await;
    health
        .set_serving::<GraphServiceServer<crate::api::graph::GraphApi>>()
        .await;
    health.set_serving::<BuildServiceServer<StreamApi>>().await;
    health
        .set_serving::<TemplateServiceServer<crate::api::templates::TemplateApi>>()
        .await;
    health
        .set_serving::<RegistryServiceServer<RegistryApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Transport(e.to_string()))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Transport(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    devctl_proto::pki::write_file(
        &config.data_dir.addr_file(),
        addr.to_string().as_bytes(),
        0o644,
    )
    .map_err(|e| ServeError::Io(e.to_string()))?;
    tracing::info!(%addr, nats = %config.nats, "scheduler listening (TLS; client certificate or API token)");

    let stop = CancellationToken::new();
    // Stops the heartbeat loop on every way out of this function.
    let _stop_on_exit = stop.clone().drop_guard();
    let heartbeat_task = tokio::spawn(heartbeat_loop(cluster.clone(), heartbeats, stop.clone()));
    let events_task = tokio::spawn(crate::event_workers::run(
        cluster.clone(),
        bus.clone(),
        engine_events,
        stop.clone(),
    ));
    let stats_task = tokio::spawn(stats_loop(cluster.clone(), stats_reports, stop.clone()));
    let supervise_task = tokio::spawn(supervise_loop(
        cluster.clone(),
        config.settings.reconcile_interval,
        stop.clone(),
    ));
    let renew_task = tokio::spawn(renew_loop(enroll.clone(), renew_requests, stop.clone()));
    let revocation_task = tokio::spawn({
        let (auth, stop) = (auth.clone(), stop.clone());
        async move {
            auth.watch_revocations(Duration::from_millis(250), stop)
                .await
        }
    });
    let streams = TaskTracker::new();
    // At the shutdown signal, end the streams first (a following watch
    // would otherwise hold the graceful drain open), then drain.
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };

    let (projection, graph_task) = match config.graph.clone() {
        Some(g) => {
            let (p, task) =
                crate::graph::project::start(g, store.clone(), bus.clone(), stop.clone());
            (Some(p), Some(task))
        }
        None => (None, None),
    };
    let streaming = StreamApi::new(cluster.clone(), auth.clone(), stop.clone(), streams.clone());
    let images = ImageApi::new(cluster.clone());
    let images = match image_pushes(&bus, &config).await {
        Ok(Some(pushes)) => images.with_push(streaming.clone(), pushes),
        Ok(None) => images,
        Err(e) => {
            tracing::warn!(error = %e, "image pushes are off: the image archive store is unusable");
            images
        }
    };
    let authenticate = {
        let (auth, projection) = (auth.clone(), projection.clone());
        move |req| {
            let req = auth.authenticate(req)?;
            // The graph notes callers' roles and activity (never waits).
            if let (Some(p), Some(id)) = (&projection, req.extensions().get::<Identity>()) {
                p.saw(id);
            }
            Ok(req)
        }
    };
    let (audit_sink, audit_writer) = AuditWriter::spawn(bus.clone());
    let limiter = config.rate_limit.map(RateLimiter::new);
    let anonymous = config.anonymous_rate_limit.map(RateLimiter::new);
    // Each service refuses a message over the transport limit with
    // OUT_OF_RANGE before decoding it, and is behind authentication.
    macro_rules! authenticated {
        ($server:ident, $api:expr) => {
            tonic::service::interceptor::InterceptedService::new(
                $server::new($api).max_decoding_message_size(MAX_MESSAGE_BYTES),
                authenticate.clone(),
            )
        };
    }
    let result = Server::builder()
        .layer(AuditLayer::new(audit_sink, limiter).with_anonymous_limit(anonymous))
        .tls_config(bundle.server_tls())
        .map_err(|e| ServeError::Transport(e.to_string()))?
        .add_service(health_service)
        .add_service(reflection)
        // Authenticates by join token or certificate itself.
        .add_service(
            EnrollServiceServer::new(enroll.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(authenticated!(TokenServiceServer, tokens))
        .add_service(authenticated!(
            ContainerServiceServer,
            ContainerApi::new(cluster.clone())
        ))
        .add_service(authenticated!(
            NodeServiceServer,
            NodeApi::new(cluster.clone())
        ))
        .add_service(authenticated!(ImageServiceServer, images))
        .add_service(authenticated!(EventServiceServer, streaming.clone()))
        .add_service(authenticated!(LogServiceServer, streaming.clone()))
        .add_service(authenticated!(ExecServiceServer, streaming.clone()))
        .add_service(authenticated!(TunnelServiceServer, streaming.clone()))
        .add_service(authenticated!(
            SshServiceServer,
            SshApi::new(cluster.clone())
        ))
        .add_service(authenticated!(StatsServiceServer, streaming.clone()))
        .add_service(authenticated!(BuildServiceServer, streaming.clone()))
        .add_service(authenticated!(
            TemplateServiceServer,
            crate::api::templates::TemplateApi::new(cluster.clone())
        ))
        .add_service(authenticated!(
            AuditServiceServer,
            AuditApi::new(bus.clone(), streaming.clone())
        ))
        .add_service(authenticated!(
            RegistryServiceServer,
            RegistryApi::new(store.clone())
        ))
        .add_service(authenticated!(
            WatchServiceServer,
            WatchApi::new(store, streaming.clone())
        ))
        .add_service(authenticated!(
            GraphServiceServer,
            crate::api::graph::GraphApi::new(projection)
        ))
        .add_service(authenticated!(
            WorkspaceServiceServer,
            crate::api::workspaces::WorkspaceApi::new(cluster.clone())
        ))
        // Our own listener (port 0 support): set TCP_NODELAY on it here, as
        // the builder's setting only applies to listeners tonic binds.
        // Without it, larger replies stall ~40 ms on Nagle + delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            shutdown,
        )
        .await
        .map_err(|e| ServeError::Transport(e.to_string()));

    stop.cancel();
    for (name, task) in [
        ("heartbeat loop", heartbeat_task),
        ("engine event loop", events_task),
        ("stats loop", stats_task),
        ("supervisor", supervise_task),
        ("revocation watcher", revocation_task),
        ("renewal loop", renew_task),
    ]
    .into_iter()
    .chain(graph_task.map(|t| ("graph projection", t)))
    {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "{name} failed");
        }
    }
    streams.close();
    if tokio::time::timeout(Duration::from_secs(10), streams.wait())
        .await
        .is_err()
    {
        tracing::warn!("client streams still open at shutdown were abandoned");
    }
    // No call is in flight any more: store the audit entries still queued.
    audit_writer.finish().await;
    // Calls in flight have finished; operations whose callers went away, and
    // inventory syncs, may still run: let them record their outcome.
    let grace = config.settings.command_timeout + Duration::from_secs(5);
    if tokio::time::timeout(grace, cluster.finish_operations())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "operations still running at shutdown were abandoned"
        );
    }
    if let Err(e) = bus.flush().await {
        tracing::warn!(error = %e, "bus flush at shutdown");
    }
    let _ = std::fs::remove_file(config.data_dir.addr_file());
    tracing::info!("scheduler stopped");
    result
}

/// Answers agents' certificate renewal requests until `stop`.
async fn renew_loop(
    enroll: EnrollApi,
    mut requests: crate::bus::RenewRequests,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = requests.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let reply = match &msg.request {
            Ok(r) => match enroll
                .renew_agent(&msg.node, &r.current_serial, &r.csr_pem)
                .await
            {
                Ok(cert) => pb::RenewReply {
                    certificate: Some(cert),
                    error: String::new(),
                },
                Err(error) => {
                    tracing::warn!(node = %msg.node, %error, "agent renewal refused");
                    pb::RenewReply {
                        certificate: None,
                        error,
                    }
                }
            },
            Err(e) => pb::RenewReply {
                certificate: None,
                error: format!("undecodable renewal request: {e}"),
            },
        };
        requests.answer(&msg, &reply).await;
    }
}

/// Takes in stats reports until `stop` is cancelled.
async fn stats_loop(cluster: Cluster, mut reports: StatsReports, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = reports.next() => match r {
                Some((node, r)) => cluster.ingest_stats(&node, r),
                None => break,
            },
        }
    }
}

/// Runs the supervisor (leases, inactivity) twice a second and a
/// reconciliation round every `reconcile_interval`, until `stop`. The
/// rounds run apart: a slow node's inventory does not hold up expiries.
async fn supervise_loop(cluster: Cluster, reconcile_interval: Duration, stop: CancellationToken) {
    let reconciler = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(reconcile_interval.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first round is the nodes' own sync at their first heartbeat.
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => tokio::select! {
                        // Each record write is atomic: stopping between
                        // them is safe.
                        _ = stop.cancelled() => break,
                        _ = cluster.reconcile() => {}
                    },
                }
            }
        }
    };
    let supervisor = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => cluster.supervise(),
            }
        }
    };
    tokio::join!(reconciler, supervisor);
}

/// Feeds heartbeats to the cluster until `stop` is cancelled, and checks
/// node liveness every second.
async fn heartbeat_loop(cluster: Cluster, mut heartbeats: Heartbeats, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hb = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                cluster.check_nodes().await;
                continue;
            }
            hb = heartbeats.next() => match hb {
                Some(hb) => hb,
                None => break,
            },
        };
        if let Err(e) = cluster.heartbeat(&hb).await {
            tracing::error!(node = %hb.node, error = %e, "recording heartbeat failed");
        }
    }
}

/// The image archive store of pushes, unless `--image-store-size 0` turned
/// them off.
async fn image_pushes(
    bus: &Bus,
    config: &ServeConfig,
) -> Result<Option<crate::api::push::Pushes>, String> {
    if config.image_store_bytes == 0 {
        return Ok(None);
    }
    let archives = bus
        .image_archives(config.image_store_bytes)
        .await
        .map_err(|e| e.to_string())?;
    crate::api::push::Pushes::new(archives, config.data_dir.uploads_dir())
        .map(Some)
        .map_err(|e| e.to_string())
}
