//! The scheduler's side of the bus: the only module of the scheduler that
//! speaks NATS. Commands go out as requests on `devctl.node.<node>.cmd`;
//! heartbeats come in on `devctl.node.*.heartbeat`.
//!
//! One file per protocol, all on the one [`Bus`] connection:
//!
//! - this file: the connection ([`Bus::connect`], [`Bus::flush`]) and
//!   [`BusError`];
//! - `request`: request/reply commands to an agent;
//! - `stream`: flow-controlled byte streams from an agent (logs, exec
//!   output) and exec input to it;
//! - `tunnel`: tunnels into containers (a flow-controlled pipe each way);
//! - `reports`: subscriptions to what agents report (heartbeats, stats);
//! - `renew`: agents' certificate renewal requests and their answers;
//! - `jetstream`: the engine-event work queue and the event history;
//! - `audit`: the audit log's stream;
//! - `objects`: the object store of pushed image archives.

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::{Client, ClientError, ConnectOptions, Event};
use devctl_proto::{
    bus,
    pki::{self, Bundle},
};
use thiserror::Error;

mod audit;
mod jetstream;
mod objects;
mod renew;
mod reports;
mod request;
mod stream;
mod tunnel;

pub use audit::{AUDIT_STREAM, AUDIT_SUBJECT, AuditReader};
pub use jetstream::{
    ENGINE_EVENT_MAX_DELIVER, ENGINE_EVENTS_IN_FLIGHT, EngineEventMsg, EngineEvents, EventReader,
    EventStart,
};
pub use objects::{IMAGE_BUCKET, ImageArchives, StoredArchive};
pub use renew::{RenewRequestMsg, RenewRequests};
pub use reports::{Heartbeats, StatsReports};
pub use stream::{ExecInputSender, StreamReader};

/// Why a command got no usable reply.
#[derive(Debug, Error)]
pub enum BusError {
    /// Nobody listens on the node's command subject: its agent is not
    /// connected.
    #[error("the agent of node {0:?} is not connected to the bus")]
    NoResponders(String),
    /// The agent did not answer in time.
    #[error("the agent of node {node:?} did not answer within {timeout:?}")]
    Timeout {
        /// The node.
        node: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The reply could not be decoded.
    #[error("the agent of node {0:?} sent an undecodable reply")]
    BadReply(String),
    /// Any other NATS failure.
    #[error("NATS: {0}")]
    Nats(String),
}

/// The scheduler's bus connection; clones share it.
#[derive(Debug, Clone)]
pub struct Bus {
    client: Client,
    jetstream: async_nats::jetstream::Context,
}

impl Bus {
    /// Connects to `url` over TLS with the bundle in `tls_dir` (`ca.pem`,
    /// `cert.pem`, `key.pem`: the data directory's `bus/`), retrying in the
    /// background if the server is not up yet. The files are read again
    /// at every reconnect.
    pub async fn connect(url: &str, tls_dir: &Path) -> Result<Self, BusError> {
        // Fails early, with the file's name, on a missing file or an
        // unprotected key.
        Bundle::load(tls_dir).map_err(|e| BusError::Nats(format!("bus certificate: {e}")))?;
        // What was last said about failed attempts: 0 nothing, 1 plain
        // text server, 2 unreachable.
        let told = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let url_owned = url.to_string();
        let conf = tls_dir
            .parent()
            .unwrap_or(tls_dir)
            .join("nats")
            .join("nats.conf");
        let client = ConnectOptions::new()
            .name("devctl-scheduler")
            .require_tls(true)
            .add_root_certificates(tls_dir.join(pki::CA_FILE))
            .add_client_certificate(tls_dir.join(pki::CERT_FILE), tls_dir.join(pki::KEY_FILE))
            .custom_inbox_prefix(bus::SCHEDULER_INBOX_PREFIX)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let told = Arc::clone(&told);
                let (url, conf) = (url_owned.clone(), conf.clone());
                async move {
                    // async-nats says only "IO error" for each failed
                    // attempt (it retries with backoff, up to 4 s): say once
                    // what is wrong, and again only when that changes.
                    let Event::ClientError(ClientError::Other(kind)) = &event else {
                        told.store(0, Ordering::Relaxed);
                        tracing::info!(%event, "bus connection");
                        return;
                    };
                    let probe = bus::probe_transport(&url, Duration::from_secs(2)).await;
                    let condition = match probe {
                        Some(bus::Transport::Plain) => 1,
                        _ => 2,
                    };
                    if told.swap(condition, Ordering::Relaxed) == condition {
                        tracing::debug!(%event, "bus connection attempt failed; retrying");
                    } else if condition == 1 {
                        tracing::error!(
                            "the bus at {url} does not speak TLS; start nats-server with {}; retrying",
                            conf.display()
                        );
                    } else {
                        tracing::warn!(error = %kind, "the bus at {url} is not reachable; retrying with backoff");
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(Self {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
        })
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }
}
