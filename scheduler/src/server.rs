//! `devctl-scheduler serve`: wires the store, the node registry, the bus and
//! the gRPC API together and runs them until shutdown.

use std::{future::Future, net::SocketAddr, time::Duration};

use devctl_proto::pb::{
    self, container_service_server::ContainerServiceServer, node_service_server::NodeServiceServer,
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{auth::authenticate, containers::ContainerApi, nodes::NodeApi},
    bus::{Bus, BusError, Heartbeats},
    cluster::{Cluster, Settings},
    datadir::{DataDir, DataDirError},
    nodes::Registry,
    store::{Store, StoreError},
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
    /// Container operation settings.
    pub settings: Settings,
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
    let registry = Registry::new(store.nodes()?, config.node_timeout);
    let bus = Bus::connect(&config.nats).await?;
    let heartbeats = bus.heartbeats().await?;
    let cluster = Cluster::new(store, registry, bus.clone(), config.settings.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ContainerServiceServer<ContainerApi>>()
        .await;
    health.set_serving::<NodeServiceServer<NodeApi>>().await;
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
    tracing::info!(%addr, nats = %config.nats, "scheduler listening (mutual TLS)");

    let stop = CancellationToken::new();
    // Stops the heartbeat loop on every way out of this function.
    let _stop_on_exit = stop.clone().drop_guard();
    let heartbeat_task = tokio::spawn(heartbeat_loop(cluster.clone(), heartbeats, stop.clone()));

    let result = Server::builder()
        .tls_config(bundle.server_tls())
        .map_err(|e| ServeError::Transport(e.to_string()))?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ContainerServiceServer::with_interceptor(
            ContainerApi::new(cluster.clone()),
            authenticate,
        ))
        .add_service(NodeServiceServer::with_interceptor(
            NodeApi::new(cluster.clone()),
            authenticate,
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
    if let Err(e) = heartbeat_task.await {
        tracing::error!(error = %e, "heartbeat loop failed");
    }
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

/// Feeds heartbeats to the cluster until `stop` is cancelled.
async fn heartbeat_loop(cluster: Cluster, mut heartbeats: Heartbeats, stop: CancellationToken) {
    loop {
        let hb = tokio::select! {
            _ = stop.cancelled() => break,
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
