//! The scheduler's operations on containers and nodes, in domain terms.
//! The API layer decodes and authorizes, then calls these; errors are
//! [`Error`], mapped to gRPC statuses at the edge.
//!
//! Rules every operation keeps:
//! - operations on one container are serialized by a per-name lock;
//! - a create is recorded (state `PENDING`) before the agent is asked, and
//!   the record is deleted again if the agent reports failure, so neither a
//!   record nor an engine container is left half-made;
//! - what the API acknowledges was committed to the store first.
//!
//! This file holds the [`Cluster`] handle, its constructor and what every
//! operation shares (commands to agents, events, tracked tasks). One file
//! per operation or concern:
//! - `error`: [`Error`] and the conversions into it;
//! - `settings`: [`Settings`], [`CreateOptions`] and the limits;
//! - `spec`: validation of a container spec;
//! - `create`, `query` (get, list), `lifecycle` (start, stop, restart),
//!   `delete`;
//! - `nodes`: listing, heartbeats, node state changes;
//! - `observe`: what nodes report (usage, engine events, inventories);
//! - `streams`: logs, exec sessions, the event history, and the sessions
//!   (exec, SSH, port-forward) recorded as events and counted as use;
//! - `ssh`: the SSH CA's certificates (users', agents' host certificates);
//! - `tunnels`: opening SSH and TCP tunnels into containers;
//! - `supervise`: the scheduler's own initiatives (leases, inactivity,
//!   health, lost nodes, reconciliation);
//! - `drain`: cordon, drain, re-placement on start;
//! - `build`: image builds on nodes (BuildService, templates' images);
//! - `templates`: templates (parsing, storage, what a create takes from one);
//! - `workspaces`: the volume each container keeps its work in (placement
//!   pin, start refusals, rm/purge, inventories' sizes);
//! - `images`: which image is on which node (agents' reports);
//! - `link`: `AgentLink`, what the cluster sends over
//!   the bus (the [`Bus`] implements it), and the pipe ends of a tunnel;
//! - tests only: `fake_link` (scripted agents, the fixture cluster),
//!   `create_tests`, `inventory_tests`.

mod build;
mod create;
#[cfg(test)]
mod create_tests;
mod delete;
mod drain;
mod error;
#[cfg(test)]
pub(crate) mod fake_link;
mod images;
#[cfg(test)]
mod inventory_tests;
mod lifecycle;
mod link;
mod nodes;
mod observe;
mod push;
mod query;
mod registry;
#[cfg(test)]
mod registry_tests;
mod settings;
mod spec;
mod ssh;
mod streams;
mod supervise;
mod templates;
mod tunnels;
mod workspace_move;
#[cfg(test)]
mod workspace_tests;
mod workspaces;

pub use build::{BuildEvent, BuildJob, DEFAULT_MAX_BUILD_CONTEXT, check_build};
pub use error::{Error, ErrorKind};
pub(crate) use link::{TunnelSink, TunnelSource};
pub(crate) use push::ArchiveSource;
pub use push::{PushJob, check_push, is_sha256_hex};
pub use settings::{
    CreateOptions, DEFAULT_PAGE_SIZE, DEFAULT_SSH_CERT_TTL, HOST_CERT_TTL, MAX_PAGE_BYTES,
    MAX_PAGE_SIZE, MAX_PUBLIC_KEY_LEN, MIN_MEMORY_BYTES, MIN_MILLI_CPUS, Settings,
};
pub use spec::validate_spec;
pub use streams::{Session, SessionWhat};
pub use supervise::{ExpiryAction, LeasePolicy};
pub use templates::{
    API_VERSION, IMAGE_REPOSITORY, MAX_TEMPLATE_BYTES, check_template_fields, parse_template,
    template_dockerfile, template_image,
};
pub use tunnels::{Tunnel, TunnelTarget, TunnelTo, tunnel_target};
pub use workspace_move::Moving;
pub use workspaces::{DEFAULT_WORKSPACE_PATH, volume_name};

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use devctl_proto::{
    keyed::KeyedLocks,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    ssh::SshCa,
};
use tokio_util::task::TaskTracker;

use crate::{
    activity::Activity,
    bus::{Bus, BusError},
    events::Intents,
    nodes::Registry,
    store::Store,
};

/// The cluster: a cheap clone handle over shared state.
#[derive(Debug, Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    nodes: Registry,
    // Agents and the event history: the bus, or a fake in unit tests.
    link: Arc<dyn link::AgentLink>,
    settings: Settings,
    // Signs users' SSH keys and agents' host keys; never leaves the
    // scheduler.
    ssh_ca: SshCa,
    locks: Arc<KeyedLocks>,
    intents: Arc<Intents>,
    stats: crate::stats::StatsCache,
    // Every mutating operation runs as a task of this tracker, so a caller
    // that goes away (deadline, Ctrl-C) cannot cut an operation in half.
    tasks: TaskTracker,
    // tokio lock: held across the store insert that follows a placement
    // decision, so two creates cannot both count the same free node.
    placement: tokio::sync::Mutex<()>,
    activity: Activity,
    // std locks below: map operations only.
    // Containers the supervisor is acting on (one action at a time each).
    busy: Arc<Mutex<HashSet<String>>>,
    // Containers whose last supervisor action failed: not before then.
    retry_after: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    // Unknown devctl containers by (node, engine id): when first seen.
    orphans: Mutex<HashMap<(String, String), tokio::time::Instant>>,
    // Nodes containers were on besides their records' (engine events).
    whereabouts: crate::events::Whereabouts,
    // Warnings about what a node sent and was refused, per node.
    refused: crate::events::Throttle,
    // Which image is on which node, as the agents report.
    images: images::ImageCatalog,
}

fn now() -> Option<prost_types::Timestamp> {
    Some(SystemTime::now().into())
}

/// The expiry of a lease of `ttl` seconds taken now (`None`: no lease).
fn lease_from_now(ttl: i64) -> Option<prost_types::Timestamp> {
    (ttl > 0).then(|| (SystemTime::now() + Duration::from_secs(ttl as u64)).into())
}

impl Cluster {
    /// A cluster over `store`, `nodes` and `bus`, whose SSH certificates
    /// `ssh_ca` signs.
    pub fn new(store: Store, nodes: Registry, bus: Bus, settings: Settings, ssh_ca: SshCa) -> Self {
        Self::with_link(store, nodes, Arc::new(bus), settings, ssh_ca)
    }

    /// A cluster that reaches its agents and the event history through
    /// `link`.
    fn with_link(
        store: Store,
        nodes: Registry,
        link: Arc<dyn link::AgentLink>,
        settings: Settings,
        ssh_ca: SshCa,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                nodes,
                link,
                ssh_ca,
                locks: KeyedLocks::new(),
                intents: Arc::default(),
                stats: crate::stats::StatsCache::default(),
                tasks: TaskTracker::new(),
                placement: tokio::sync::Mutex::new(()),
                activity: Activity::new(settings.idle.clone()),
                busy: Arc::default(),
                retry_after: Arc::default(),
                orphans: Mutex::default(),
                whereabouts: Default::default(),
                refused: Default::default(),
                images: Default::default(),
                settings,
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Sends a command to `node`'s agent; `extra` seconds are added to the
    /// command timeout (a stop's grace period).
    async fn send_raw(&self, node: &str, command: Command, extra: i32) -> Result<Reply, BusError> {
        let timeout =
            self.shared.settings.command_timeout + Duration::from_secs(extra.max(0) as u64);
        self.shared.link.command(node, command, timeout).await
    }

    async fn send(&self, node: &str, command: Command, extra: i32) -> Result<Reply, Error> {
        Ok(self.send_raw(node, command, extra).await?)
    }

    /// Runs `op` as a task of the cluster and waits for it: if the caller
    /// goes away, the operation still completes and records its outcome.
    async fn detached<T: Send + 'static>(
        &self,
        op: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared
            .tasks
            .spawn(op)
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("operation task failed: {e}"))))
    }

    /// Waits for every operation in flight to finish (at shutdown).
    pub async fn finish_operations(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Appends an event to the history; `id` de-duplicates retries. A
    /// failure is logged: the operation that caused the event stands.
    async fn emit(&self, event: pb::Event, id: String) -> Result<(), BusError> {
        let subject = if event.container.is_empty() {
            devctl_proto::bus::node_event_subject(&event.node)
        } else {
            devctl_proto::bus::container_event_subject(&event.node, &event.container)
        };
        let published = self.shared.link.publish_event(subject, &event, &id).await;
        if let Err(e) = &published {
            tracing::error!(error = %e, event = %event.message, "event not recorded");
        }
        published.map(|_| ())
    }
}
