//! One engine network per owner and node: the containers of one owner
//! reach each other (by IP and by their devctl name), and no container of
//! another owner reaches them. Docker isolates user-defined bridge networks
//! from each other, and devctl containers never join the default bridge.
//!
//! The agent creates an owner's network with the owner's first container
//! on the node and removes it with the last one; `collect` also runs on
//! every inventory, so a network left behind (a container removed behind
//! devctl's back, an agent stopped mid-removal) goes at the next sync. One
//! lock per owner orders "make sure the network exists, then create the
//! container" against "no container left, remove the network".

use std::{collections::HashMap, sync::Arc};

use bollard::{
    Docker,
    errors::Error as BollardError,
    models::NetworkCreateRequest,
    query_parameters::{ListContainersOptions, ListNetworksOptions},
};
use devctl_proto::{
    keyed::{KeyGuard, KeyedLocks},
    labels,
};

use crate::runtime::RuntimeError;

/// The owner networks of one node on one engine.
#[derive(Debug, Clone)]
pub(super) struct OwnerNetworks {
    docker: Docker,
    node: String,
    locks: Arc<KeyedLocks>,
}

/// What the label `io.devctl.network` holds on an owner network.
const KIND_OWNER: &str = "owner";

impl OwnerNetworks {
    pub(super) fn new(docker: Docker, node: &str) -> Self {
        Self {
            docker,
            node: node.to_string(),
            locks: KeyedLocks::new(),
        }
    }

    /// A label filter: devctl's objects of this node with label `extra`.
    fn labelled(&self, extra: &str) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={}", labels::NODE, self.node),
                extra.to_string(),
            ],
        )])
    }

    /// The engine name of `owner`'s network on this node. Owners and nodes
    /// are DNS labels, so the name is a valid engine name and `.` cannot be
    /// part of either.
    pub(super) fn name(&self, owner: &str) -> String {
        format!("devctl-{}.{}", owner_key(owner), self.node)
    }

    /// Makes sure `owner`'s network exists, and holds the owner's lock
    /// until the guard is dropped: create the container before dropping
    /// it, so `collect` cannot remove the network in between.
    pub(super) async fn ensure(&self, owner: &str) -> Result<(String, KeyGuard), RuntimeError> {
        let guard = self.locks.lock(owner_key(owner)).await;
        let name = self.name(owner);
        match self.docker.inspect_network(&name, None).await {
            Ok(_) => return Ok((name, guard)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(network_error(&name, e)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::NODE.to_string(), self.node.clone()),
                (labels::OWNER.to_string(), owner.to_string()),
                (labels::NETWORK.to_string(), KIND_OWNER.to_string()),
            ])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|e| network_error(&name, e))?;
        tracing::info!(network = %name, owner, "created the owner's network");
        Ok((name, guard))
    }

    /// Removes `owner`'s network on this node if none of the owner's
    /// containers is left on it. A network still in use by something else
    /// (an admin connected a container by hand) stays.
    pub(super) async fn collect(&self, owner: &str) -> Result<(), RuntimeError> {
        let _guard = self.locks.lock(owner_key(owner)).await;
        let name = self.name(owner);
        let mine = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.labelled(&format!("{}={owner}", labels::OWNER))),
                ..Default::default()
            }))
            .await
            .map_err(|e| network_error(&name, e))?;
        if !mine.is_empty() {
            return Ok(());
        }
        match self.docker.remove_network(&name).await {
            Ok(()) => {
                tracing::info!(network = %name, owner, "removed the owner's network");
                Ok(())
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Active endpoints: something outside devctl still uses it.
            Err(BollardError::DockerResponseServerError {
                status_code: 403 | 409,
                message,
            }) => {
                tracing::info!(network = %name, %message, "owner network still in use; kept");
                Ok(())
            }
            Err(e) => Err(network_error(&name, e)),
        }
    }

    /// Collects every owner network of this node that no container of its
    /// owner uses any more.
    pub(super) async fn collect_all(&self) -> Result<(), RuntimeError> {
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(self.labelled(&format!("{}={KIND_OWNER}", labels::NETWORK))),
            }))
            .await
            .map_err(|e| RuntimeError::Engine(format!("listing owner networks: {e}")))?;
        for n in networks {
            let Some(owner) = n.labels.as_ref().and_then(|l| l.get(labels::OWNER)) else {
                continue;
            };
            self.collect(owner).await?;
        }
        Ok(())
    }
}

/// Containers without an owner (none are made so today) share one network.
fn owner_key(owner: &str) -> &str {
    if owner.is_empty() { "unowned" } else { owner }
}

fn network_error(name: &str, e: BollardError) -> RuntimeError {
    let message = match e {
        BollardError::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    let hint = if message.contains("address pool") || message.contains("non-overlapping") {
        " (the engine has no address range left for another network: give it more with \
         \"default-address-pools\" in /etc/docker/daemon.json, see \"Networks\" in docs/architecture.md)"
    } else {
        ""
    };
    RuntimeError::Engine(format!("network {name}: {message}{hint}"))
}
