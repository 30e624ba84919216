//! The scheduler's embedded, crash-safe store (redb). Nothing else touches
//! the database file.
//!
//! Records are the API's own protobuf messages, encoded with prost: the
//! proto is the only model of a container or a node. Every write is one
//! redb transaction committed with immediate durability (fsync) before the
//! call returns, so whatever the API acknowledged survives a crash or
//! `kill -9`.
//!
//! Tables:
//! - `containers`: name → `Container` (ordered by name: pagination walks it)
//! - `container_ids`: id → name
//! - `nodes`: name → `Node` (capacity, labels, cordon, first seen;
//!   liveness is kept in memory)
//! - `create_requests`: client request id → container id
//! - `join_tokens_used`, `api_tokens`: see [`access`]
//! - `identities`: see [`identities`]
//! - `registries`: see [`registry`] (passwords encrypted at rest)
//! - `meta`: the change feed's epoch (see [`crate::feed`]) and the
//!   store's random id
//! - `templates`: see [`templates`]
//! - `workspaces`: name → `Workspace` (see `workspaces.rs`)
//!
//! Beside the database, an in-memory [`Index`] summarises every container
//! (per-node reservations, lease expiries, running set) so that placement
//! and the lease and idle checks never scan the records. Writes update it
//! after their commit, in commit order, and publish the change (the record
//! before and after) on the [`Feed`], in the same order.

mod access;
mod error;
#[cfg(test)]
mod feed_tests;
mod identities;
mod index;
mod legacy;
mod templates;
mod workspaces;

pub use workspaces::WorkspaceUsage;
mod registry;

pub use error::StoreError;

pub use access::StoredToken;
pub use identities::{Claim, IdentityKind, JoinOutcome};
pub use registry::{StoredRegistry, VaultError};

use devctl_proto::container::ContainerExt;
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

pub use index::NodeUsage;
use index::{Index, Summary};

use crate::feed::{Change, Diff, Feed};
use devctl_proto::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const CONTAINERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("containers");
const CONTAINER_IDS: TableDefinition<'_, &str, &str> = TableDefinition::new("container_ids");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
const REQUESTS: TableDefinition<'_, &str, &str> = TableDefinition::new("create_requests");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const FEED_EPOCH: &str = "feed_epoch";
/// A random number made when the store is created: tells this store from
/// another (a projection's cursor belongs to one store).
const STORE_ID: &str = "store_id";

/// Which containers a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// Only this node's.
    pub node: Option<String>,
    /// Only this owner's.
    pub owner: Option<String>,
}

impl ContainerFilter {
    fn matches(&self, c: &pb::Container) -> bool {
        self.node.as_ref().is_none_or(|n| *n == c.status().node)
            && self.owner.as_ref().is_none_or(|o| *o == c.owner)
    }
}

/// A handle to the store; clones share one database.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    // std locks, held on the blocking pool only. `write_order` spans a
    // write's commit and its index update, so the index sees commits in
    // order; readers take `index` briefly.
    write_order: Mutex<()>,
    index: RwLock<Index>,
    feed: Feed,
    registry_key: registry::KeySlot,
    id: u64,
}

/// What a write changed, applied once it has committed: the index entries
/// and the feed's changes.
#[derive(Default)]
struct Changes {
    index: Vec<(String, Option<Summary>)>,
    feed: Vec<Change>,
    nodes: Vec<pb::Node>,
}

impl Changes {
    /// Container `name` went from `before` to `after`.
    fn container(&mut self, before: Option<pb::Container>, after: Option<pb::Container>) {
        let name = after.as_ref().or(before.as_ref()).map(|c| c.name.clone());
        if let Some(name) = name {
            self.index.push((name, after.as_ref().map(Summary::of)));
            if before != after {
                self.feed.push(Change::Container(Diff { before, after }));
            }
        }
    }
}

/// Everything the store holds of containers and nodes at one feed revision.
#[derive(Debug)]
pub struct Snapshot {
    /// The feed revision the snapshot is at: changes after it follow.
    pub revision: u64,
    /// Every container, by name.
    pub containers: Vec<pb::Container>,
    /// Every node as the feed shows it (record and state), by name.
    pub nodes: Vec<pb::Node>,
    /// Every workspace, by name.
    pub workspaces: Vec<pb::Workspace>,
}

/// Rewrites container records from before the spec/status split (see
/// [`legacy`]) in `txn`, which commits them with the rest of the open.
fn migrate_containers(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut table = txn.open_table(CONTAINERS)?;
    let mut upgraded = Vec::new();
    for entry in table.range::<&str>(..)? {
        let (k, v) = entry?;
        let c: pb::Container = decode(k.value(), v.value())?;
        let corrupt = |source| StoreError::Corrupt {
            key: k.value().to_string(),
            source,
        };
        if let Some(c) = legacy::upgrade(c, v.value()).map_err(corrupt)? {
            upgraded.push((k.value().to_string(), c.encode_to_vec()));
        }
    }
    if !upgraded.is_empty() {
        tracing::info!(
            containers = upgraded.len(),
            "moved container records from before the spec/status split to the new layout"
        );
    }
    for (name, bytes) in upgraded {
        table.insert(name.as_str(), bytes.as_slice())?;
    }
    Ok(())
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

impl Store {
    /// Opens (or creates) the database at `path`, readable by its owner
    /// only (it holds every container's environment). redb recovers an
    /// interrupted commit on open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::Db(redb::StorageError::from(e).into());
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(CONTAINERS)?;
        txn.open_table(CONTAINER_IDS)?;
        txn.open_table(NODES)?;
        txn.open_table(REQUESTS)?;
        txn.open_table(access::JOIN_TOKENS_USED)?;
        txn.open_table(access::API_TOKENS)?;
        txn.open_table(identities::IDENTITIES)?;
        txn.open_table(workspaces::WORKSPACES)?;
        txn.open_table(registry::REGISTRIES)?;
        let (epoch, id) = {
            let mut meta = txn.open_table(META)?;
            let epoch = meta.get(FEED_EPOCH)?.map_or(0, |v| v.value()) + 1;
            meta.insert(FEED_EPOCH, epoch)?;
            let id = meta.get(STORE_ID)?.map(|v| v.value());
            let id = match id {
                Some(id) => id,
                None => {
                    let id = rand::random::<u64>();
                    meta.insert(STORE_ID, id)?;
                    id
                }
            };
            (epoch, id)
        };
        migrate_containers(&txn)?;
        txn.commit()?;
        let feed = Feed::new(epoch, crate::feed::RETAINED);
        let mut index = Index::default();
        {
            let txn = db.begin_read()?;
            let table = txn.open_table(CONTAINERS)?;
            for entry in table.range::<&str>(..)? {
                let (k, v) = entry?;
                let c: pb::Container = decode(k.value(), v.value())?;
                index.set(&c.name, Some(Summary::of(&c)));
            }
        }
        let store = Self {
            inner: Arc::new(Inner {
                db,
                write_order: Mutex::new(()),
                index: RwLock::new(index),
                feed,
                registry_key: registry::KeySlot::beside(path),
                id,
            }),
        };
        store.inner.feed.seed_nodes(store.nodes()?);
        Ok(store)
    }

    /// This store's identity (random, made when it was created).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The change feed of this store's commits.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// Every container and node at one feed revision: no commit lands
    /// between reading the containers and taking the revision.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _order = this
                .inner
                .write_order
                .lock()
                .expect("store write lock poisoned");
            let (containers, _) =
                this.list_containers(None, usize::MAX, &ContainerFilter::default())?;
            // Node states change outside the write lock; the feed reads
            // them and its revision together.
            let workspaces = this.workspaces()?;
            let (revision, nodes) = this.inner.feed.nodes_at();
            Ok(Snapshot {
                revision,
                containers,
                nodes,
                workspaces,
            })
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn db(&self) -> &Database {
        &self.inner.db
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.index.read().expect("store index poisoned")
    }

    /// Runs a write on the blocking pool (commits fsync); the index
    /// changes `f` lists are applied once it returned successfully.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &mut Changes) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _order = inner.write_order.lock().expect("store write lock poisoned");
            let mut changes = Changes::default();
            let out = f(&inner.db, &mut changes)?;
            {
                let mut index = inner.index.write().expect("store index poisoned");
                for (name, summary) in changes.index {
                    index.set(&name, summary);
                }
            }
            inner.feed.publish(changes.feed);
            for n in &changes.nodes {
                inner.feed.node_record(n);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Records a new container, and the client request id that created it
    /// (if any). Fails with [`StoreError::NameTaken`] if the name is in use.
    pub async fn insert_container(
        &self,
        c: pb::Container,
        request_id: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            {
                let mut containers = txn.open_table(CONTAINERS)?;
                if containers.get(c.name.as_str())?.is_some() {
                    return Err(StoreError::NameTaken(c.name));
                }
                containers.insert(c.name.as_str(), c.encode_to_vec().as_slice())?;
                txn.open_table(CONTAINER_IDS)?
                    .insert(c.id.as_str(), c.name.as_str())?;
                if let Some(r) = request_id {
                    txn.open_table(REQUESTS)?
                        .insert(r.as_str(), c.id.as_str())?;
                }
            }
            txn.commit()?;
            changes.container(None, Some(c));
            Ok(())
        })
        .await
    }

    /// Replaces the record of an existing container (same name and id).
    pub async fn update_container(&self, c: pb::Container) -> Result<(), StoreError> {
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            let before = {
                let mut containers = txn.open_table(CONTAINERS)?;
                let old = containers.insert(c.name.as_str(), c.encode_to_vec().as_slice())?;
                old.map(|v| decode::<pb::Container>(&c.name, v.value()))
                    .transpose()?
            };
            txn.commit()?;
            changes.container(before, Some(c));
            Ok(())
        })
        .await
    }

    /// Changes a container's record in one transaction (read, `f`, write),
    /// so it cannot lose a concurrent update. `f` returns whether it changed
    /// anything. Returns the new record, or `None` if there is none.
    pub async fn modify_container(
        &self,
        name: &str,
        f: impl FnOnce(&mut pb::Container) -> bool + Send + 'static,
    ) -> Result<Option<pb::Container>, StoreError> {
        let name = name.to_string();
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            let updated = {
                let mut containers = txn.open_table(CONTAINERS)?;
                let current = match containers.get(name.as_str())? {
                    Some(v) => decode::<pb::Container>(&name, v.value())?,
                    None => return Ok(None),
                };
                let mut c = current.clone();
                if !f(&mut c) {
                    return Ok(Some(c));
                }
                containers.insert(name.as_str(), c.encode_to_vec().as_slice())?;
                (current, c)
            };
            txn.commit()?;
            let (before, after) = updated;
            changes.container(Some(before), Some(after.clone()));
            Ok(Some(after))
        })
        .await
    }

    /// Deletes a container's record.
    pub async fn delete_container(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            let before = {
                let mut containers = txn.open_table(CONTAINERS)?;
                let old = match containers.remove(name.as_str())? {
                    Some(old) => decode::<pb::Container>(&name, old.value())?,
                    None => return Ok(()),
                };
                txn.open_table(CONTAINER_IDS)?.remove(old.id.as_str())?;
                old
            };
            txn.commit()?;
            changes.container(Some(before), None);
            Ok(())
        })
        .await
    }

    /// The id of the container a create request id made, if any.
    pub fn container_id_by_request(&self, request_id: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(REQUESTS)?;
        let found = table.get(request_id)?;
        Ok(found.map(|v| v.value().to_string()))
    }

    /// One container by name.
    pub fn container(&self, name: &str) -> Result<Option<pb::Container>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(CONTAINERS)?;
        let found = table.get(name)?;
        found.map(|v| decode(name, v.value())).transpose()
    }

    /// The name of the container with this id.
    pub fn container_name_by_id(&self, id: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(CONTAINER_IDS)?;
        let found = table.get(id)?;
        Ok(found.map(|v| v.value().to_string()))
    }

    /// Up to `limit` containers matching `filter`, in name order, starting
    /// after `after`. The flag says whether more remain.
    pub fn list_containers(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &ContainerFilter,
    ) -> Result<(Vec<pb::Container>, bool), StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(CONTAINERS)?;
        let range = match after {
            Some(a) => {
                table.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
            }
            None => table.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for entry in range {
            let (k, v) = entry?;
            let c: pb::Container = decode(k.value(), v.value())?;
            if !filter.matches(&c) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(c);
        }
        Ok((out, false))
    }

    /// What each node holds: its containers, and the CPU and memory
    /// reserved by those meant to run (from the index: no scan, no copy).
    pub fn node_usage(&self) -> Arc<BTreeMap<String, NodeUsage>> {
        self.index().usage()
    }

    /// Containers (name, node) whose lease has run out by `now`, earliest
    /// first.
    pub fn leases_due(&self, now: SystemTime) -> Vec<(String, String)> {
        self.index().leases_due(now)
    }

    /// Calls `f` with (name, node) of each container observed running and
    /// meant to run, under the index's read lock: `f` must be quick and
    /// must not write to the store.
    pub fn for_each_running(&self, f: impl FnMut(&str, &str)) {
        self.index().for_each_running(f)
    }

    /// What `owner` holds: containers (running or not), CPU and memory
    /// they ask for.
    pub fn owned(&self, owner: &str) -> NodeUsage {
        self.index().owned(owner)
    }

    /// Containers (name, node) running with a failing health check.
    pub fn unhealthy_names(&self) -> Vec<(String, String)> {
        self.index().unhealthy()
    }

    /// Names of `node`'s containers.
    pub fn names_on_node(&self, node: &str) -> Vec<String> {
        self.index().on_node(node)
    }

    /// Records a node (capacity, labels, cordon, first seen).
    pub async fn put_node(&self, n: pb::Node) -> Result<(), StoreError> {
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            txn.open_table(NODES)?
                .insert(n.name.as_str(), n.encode_to_vec().as_slice())?;
            txn.commit()?;
            changes.nodes.push(n);
            Ok(())
        })
        .await
    }

    /// Every recorded node, by name.
    pub fn nodes(&self) -> Result<Vec<pb::Node>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(NODES)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, node: &str) -> pb::Container {
        pb::Container {
            name: name.into(),
            id: format!("id-{name}"),
            owner: "alice".into(),
            spec: Some(pb::ContainerSpec {
                image: "img".into(),
                ..Default::default()
            }),
            status: Some(pb::ContainerStatus {
                node: node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn names_are_unique_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .insert_container(container("a", "n1"), None)
                .await
                .unwrap();
            let err = store
                .insert_container(container("a", "n2"), None)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NameTaken(ref n) if n == "a"));
            let mut b = container("b", "n2");
            store.insert_container(b.clone(), None).await.unwrap();
            b.status_mut().last_error = "boom".into();
            store.update_container(b).await.unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.container("a").unwrap().unwrap().status().node, "n1");
        assert_eq!(
            store.container("b").unwrap().unwrap().status().last_error,
            "boom"
        );
        assert_eq!(
            store.container_name_by_id("id-b").unwrap().as_deref(),
            Some("b")
        );
        store.delete_container("a").await.unwrap();
        assert!(store.container("a").unwrap().is_none());
        assert!(store.container_name_by_id("id-a").unwrap().is_none());
    }

    #[tokio::test]
    async fn listing_pages_in_name_order_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        for (name, node) in [("c", "n1"), ("a", "n1"), ("b", "n2"), ("d", "n1")] {
            store
                .insert_container(container(name, node), None)
                .await
                .unwrap();
        }
        let all = ContainerFilter::default();
        let (page, more) = store.list_containers(None, 2, &all).unwrap();
        assert_eq!(
            page.iter().map(|c| &c.name[..]).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(more);
        let (page, more) = store.list_containers(Some("b"), 2, &all).unwrap();
        assert_eq!(
            page.iter().map(|c| &c.name[..]).collect::<Vec<_>>(),
            ["c", "d"]
        );
        assert!(!more);
        let n1 = ContainerFilter {
            node: Some("n1".into()),
            ..Default::default()
        };
        let (page, _) = store.list_containers(None, 10, &n1).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(store.node_usage()["n1"].containers, 3);
        // The index is rebuilt from the records on open.
        drop(store);
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(store.node_usage()["n1"].containers, 3);
        assert_eq!(store.names_on_node("n2"), ["b"]);
    }
}
