//! What the graph holds, as rows: feed changes, history events and callers
//! seen by the API turned into the rows one write sends (pure; no Bolt
//! here, see [`super::client`]).
//!
//! A [`Batch`] keeps one row per record (the latest change wins), so a
//! burst of changes to one container is one row, and it remembers the
//! feed revision and event sequence it reaches: the write stores them with
//! the rows, in the same transaction.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use devctl_proto::{container::ContainerExt, identity::Role, pb, words};

use crate::feed::{Change, Entry};

/// A container as the graph keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRow {
    /// Its id (the graph's key).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its image reference, as the spec names it.
    pub image: String,
    /// `running`, `stopped`, `failed`, `lost`, `pending`.
    pub status: String,
    /// The node it is placed on (empty: not placed).
    pub host: String,
    /// Its owner (who created it).
    pub owner: String,
    /// Its workspace.
    pub workspace: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// When its record last changed.
    pub updated_at: SystemTime,
    /// CPUs reserved.
    pub cpus: f64,
    /// Memory reserved, in bytes.
    pub memory_bytes: i64,
    /// Its record was added by this change (it may succeed an older one):
    /// its creator, image and predecessor are linked.
    pub added: bool,
    /// It was placed on another node (or added): its host edge is written.
    pub moved: bool,
    /// The image its image was built from, where known (a template's
    /// recipe).
    pub base_image: Option<String>,
}

/// A host as the graph keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    /// The node's name.
    pub hostname: String,
    /// Its memory, in bytes.
    pub total_memory: i64,
    /// Its CPUs.
    pub total_cpu: i64,
    /// Its engine's version.
    pub docker_version: String,
    /// Its labels, as `key=value`, sorted (graph properties hold no maps).
    pub labels: Vec<String>,
    /// `ready`, `down`, `unknown`.
    pub state: String,
    /// Cordoned (no new placements).
    pub cordoned: bool,
}

/// A session's start or end.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// The session id (the graph's key).
    pub id: String,
    /// `exec`, `ssh` or `port_forward`.
    pub kind: &'static str,
    /// Who opened it.
    pub actor: String,
    /// The container's id.
    pub container_id: String,
    /// When it started or ended.
    pub at: SystemTime,
}

/// A caller the API authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// Its name.
    pub username: String,
    /// Its role.
    pub role: String,
    /// When it was seen.
    pub at: SystemTime,
}

/// A container record that was deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedRow {
    /// Its id.
    pub id: String,
    /// When.
    pub at: SystemTime,
}

/// A container the history shows but the store no longer holds (created
/// and removed while the projection was not following the feed).
#[derive(Debug, Clone, PartialEq)]
pub struct GoneRow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its node.
    pub host: String,
    /// Who created it ("system" when the history does not say).
    pub actor: String,
    /// When it was created.
    pub at: SystemTime,
}

/// An image built or pushed onto a node (from the event history).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEventRow {
    /// The image's reference.
    pub image: String,
    /// What it was built from, where known.
    pub base: Option<String>,
    /// Built (or pushed).
    pub built: bool,
    /// When.
    pub at: SystemTime,
}

/// The rows of one write, and where the write leaves the projection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    containers: BTreeMap<String, ContainerRow>,
    deleted: BTreeMap<String, DeletedRow>,
    gone_created: Vec<GoneRow>,
    gone_removed: Vec<DeletedRow>,
    images: Vec<ImageEventRow>,
    /// Set by a resync: every container it writes is stamped with it, and
    /// those without it afterwards are marked deleted.
    pub generation: Option<String>,
    hosts: BTreeMap<String, HostRow>,
    started: Vec<SessionRow>,
    ended: Vec<SessionRow>,
    users: HashMap<String, UserRow>,
    /// The last feed revision in the batch.
    pub revision: Option<u64>,
    /// The last event sequence in the batch.
    pub event_sequence: Option<u64>,
    /// Changes and events taken in (for throughput figures).
    pub changes: usize,
}

/// `pb::ContainerState` as the graph's `status`.
pub fn status_name(state: i32) -> String {
    words::container_state(
        pb::ContainerState::try_from(state).unwrap_or(pb::ContainerState::Unspecified),
    )
}

fn node_state_name(state: i32) -> String {
    words::node_state(pb::NodeState::try_from(state).unwrap_or(pb::NodeState::Unspecified))
}

fn time_of(t: Option<&prost_types::Timestamp>, or: SystemTime) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(or)
}

/// The row of container record `c`, changed at `at`.
pub fn container_row(c: &pb::Container, at: SystemTime, added: bool) -> ContainerRow {
    let spec = c.spec();
    let res = spec.resources.unwrap_or_default();
    ContainerRow {
        id: c.id.clone(),
        name: c.name.clone(),
        image: spec.image.clone(),
        status: status_name(c.status().state),
        host: c.status().node.clone(),
        owner: c.owner.clone(),
        workspace: spec.workspace.clone(),
        created_at: time_of(c.create_time.as_ref(), at),
        updated_at: time_of(c.update_time.as_ref(), at),
        cpus: res.milli_cpus as f64 / 1000.0,
        memory_bytes: res.memory_bytes,
        added,
        moved: added,
        base_image: spec
            .image_recipe
            .as_ref()
            .and_then(|r| dockerfile_base(&r.dockerfile)),
    }
}

/// The row of node `n`.
pub fn host_row(n: &pb::Node) -> HostRow {
    let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    HostRow {
        hostname: n.name.clone(),
        total_memory: n.memory_bytes,
        total_cpu: i64::from(n.cpus),
        docker_version: n.docker_version.clone(),
        labels,
        state: node_state_name(n.state),
        cordoned: n.cordoned,
    }
}

/// An image reference as the graph keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The normalised reference (the key): Docker Hub's `docker.io/` and
    /// `library/` prefixes dropped, `:latest` added when no tag or digest
    /// is given, so `busybox`, `busybox:latest` and
    /// `docker.io/library/busybox` are one image.
    pub reference: String,
    /// The repository (`devctl/dev`, `127.0.0.1:5000/team/img`).
    pub name: String,
    /// The tag (empty for a digest reference without one).
    pub tag: String,
    /// The digest (`sha256:…`), when the reference names one.
    pub digest: String,
}

/// Parses and normalises an image reference.
pub fn image_ref(image: &str) -> ImageRef {
    let image = image.trim();
    let image = image
        .strip_prefix("docker.io/library/")
        .or_else(|| image.strip_prefix("docker.io/"))
        .unwrap_or(image);
    let (named, digest) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_string()),
        None => (image, String::new()),
    };
    // A ':' after the last '/' separates the tag (a registry port does not).
    let slash = named.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match named[slash..].rfind(':') {
        Some(i) => (
            named[..slash + i].to_string(),
            named[slash + i + 1..].to_string(),
        ),
        None if digest.is_empty() => (named.to_string(), "latest".to_string()),
        None => (named.to_string(), String::new()),
    };
    let mut reference = name.clone();
    if !tag.is_empty() {
        reference = format!("{reference}:{tag}");
    }
    if !digest.is_empty() {
        reference = format!("{reference}@{digest}");
    }
    ImageRef {
        reference,
        name,
        tag,
        digest,
    }
}

/// The image a Dockerfile's final stage starts from, if it names one
/// (stage names are followed to their image; `scratch` and images spelled
/// with build arguments are not known).
pub fn dockerfile_base(dockerfile: &str) -> Option<String> {
    let mut stages: HashMap<String, Option<String>> = HashMap::new();
    let mut last: Option<Option<String>> = None;
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut words = words.skip_while(|w| w.starts_with("--"));
        let Some(image) = words.next() else {
            continue;
        };
        let base = match stages.get(&image.to_ascii_lowercase()) {
            Some(earlier) => earlier.clone(),
            None if image.contains('$') || image.eq_ignore_ascii_case("scratch") => None,
            None => Some(image.to_string()),
        };
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("AS"))
            && let Some(alias) = words.next()
        {
            stages.insert(alias.to_ascii_lowercase(), base.clone());
        }
        last = Some(base);
    }
    last.flatten()
}

impl Batch {
    /// Nothing to write (not even a cursor move).
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Changes and events taken in.
    pub fn len(&self) -> usize {
        self.changes
    }

    /// Takes in a feed entry.
    pub fn add_change(&mut self, e: &Entry) {
        self.changes += 1;
        self.revision = Some(e.revision);
        match &e.change {
            Change::Container(d) => match (&d.before, &d.after) {
                (before, Some(after)) => {
                    let earlier = self.containers.get(&after.id);
                    let added = before.is_none() || earlier.is_some_and(|r| r.added);
                    let moved = added
                        || earlier.is_some_and(|r| r.moved)
                        || before
                            .as_ref()
                            .is_some_and(|b| b.status().node != after.status().node);
                    let mut row = container_row(after, e.time, added);
                    row.moved = moved;
                    self.containers.insert(after.id.clone(), row);
                }
                (Some(before), None) => {
                    // The record's last state is written with its deletion.
                    if let Some(row) = self.containers.get_mut(&before.id) {
                        row.updated_at = e.time;
                    } else {
                        self.containers
                            .insert(before.id.clone(), container_row(before, e.time, false));
                    }
                    self.deleted.insert(
                        before.id.clone(),
                        DeletedRow {
                            id: before.id.clone(),
                            at: e.time,
                        },
                    );
                }
                (None, None) => {}
            },
            Change::Node(d) => {
                if let Some(n) = &d.after {
                    self.hosts.insert(n.name.clone(), host_row(n));
                }
            }
            // Workspaces are not in the graph's schema (containers carry
            // theirs as a property).
            Change::Workspace(_) => {}
        }
    }

    /// Takes in a container record from a snapshot.
    pub fn add_container(&mut self, c: &pb::Container, at: SystemTime) {
        self.add_known_container(c, at, None);
    }

    /// Takes in a container record from a snapshot that the graph may
    /// already hold (`graph_host`: the host it has for it): one it holds
    /// is only updated, and its host edge rewritten if the host differs.
    pub fn add_known_container(
        &mut self,
        c: &pb::Container,
        at: SystemTime,
        graph_host: Option<&str>,
    ) {
        self.changes += 1;
        let mut row = container_row(c, at, graph_host.is_none());
        row.moved = graph_host.is_none_or(|h| h != row.host);
        self.containers.insert(c.id.clone(), row);
    }

    /// Takes in a node from a snapshot.
    pub fn add_node(&mut self, n: &pb::Node) {
        self.changes += 1;
        self.hosts.insert(n.name.clone(), host_row(n));
    }

    /// Takes in an event of the history: sessions, and the creation and
    /// removal of containers the store no longer holds (`gone`: the
    /// projector looked the id up); other events only move the cursor.
    pub fn add_event(&mut self, ev: &pb::Event, gone: bool) {
        self.changes += 1;
        self.event_sequence = Some(ev.sequence);
        let ty = pb::EventType::try_from(ev.r#type).unwrap_or(pb::EventType::Unspecified);
        let at = time_of(ev.time.as_ref(), SystemTime::now());
        match ty {
            pb::EventType::ContainerCreated if gone && !ev.container_id.is_empty() => {
                self.gone_created.push(GoneRow {
                    id: ev.container_id.clone(),
                    name: ev.container.clone(),
                    host: ev.node.clone(),
                    actor: ev.actor.clone(),
                    at,
                });
                return;
            }
            pb::EventType::ContainerRemoved if gone && !ev.container_id.is_empty() => {
                self.gone_removed.push(DeletedRow {
                    id: ev.container_id.clone(),
                    at,
                });
                return;
            }
            pb::EventType::ImageBuilt | pb::EventType::ImagePushed if !ev.image.is_empty() => {
                self.images.push(ImageEventRow {
                    image: ev.image.clone(),
                    base: (!ev.base_image.is_empty()).then(|| ev.base_image.clone()),
                    built: ty == pb::EventType::ImageBuilt,
                    at,
                });
                return;
            }
            _ => {}
        }
        let (kind, start) = match ty {
            pb::EventType::ExecStarted => ("exec", true),
            pb::EventType::ExecEnded => ("exec", false),
            pb::EventType::SshStarted => ("ssh", true),
            pb::EventType::SshEnded => ("ssh", false),
            pb::EventType::PortForwardStarted => ("port_forward", true),
            pb::EventType::PortForwardEnded => ("port_forward", false),
            _ => return,
        };
        if ev.session.is_empty() || ev.container_id.is_empty() || ev.actor.is_empty() {
            return;
        }
        let row = SessionRow {
            id: ev.session.clone(),
            kind,
            actor: ev.actor.clone(),
            container_id: ev.container_id.clone(),
            at,
        };
        if start {
            self.started.push(row);
        } else {
            self.ended.push(row);
        }
    }

    /// Whether the history event `ev` concerns a container's existence (the
    /// projector then tells [`Batch::add_event`] whether the store still
    /// holds it).
    pub fn asks_if_gone(ev: &pb::Event) -> bool {
        matches!(
            pb::EventType::try_from(ev.r#type),
            Ok(pb::EventType::ContainerCreated | pb::EventType::ContainerRemoved)
        ) && !ev.container_id.is_empty()
    }

    /// Takes in a caller the API saw (`role`: known from a certificate;
    /// an API token's may be narrower than its owner's).
    pub fn add_user(&mut self, username: &str, role: Option<Role>, at: SystemTime) {
        self.changes += 1;
        self.users.insert(
            username.to_string(),
            UserRow {
                username: username.to_string(),
                role: role.map(|r| r.to_string()).unwrap_or_default(),
                at,
            },
        );
    }

    /// The containers to write, in id order.
    pub fn containers(&self) -> impl Iterator<Item = &ContainerRow> {
        self.containers.values()
    }

    /// The deleted container records.
    pub fn deleted(&self) -> impl Iterator<Item = &DeletedRow> {
        self.deleted.values()
    }

    /// The hosts to write.
    pub fn hosts(&self) -> impl Iterator<Item = &HostRow> {
        self.hosts.values()
    }

    /// Sessions started, in history order.
    pub fn started(&self) -> &[SessionRow] {
        &self.started
    }

    /// Sessions ended, in history order.
    pub fn ended(&self) -> &[SessionRow] {
        &self.ended
    }

    /// Callers seen.
    pub fn users(&self) -> impl Iterator<Item = &UserRow> {
        self.users.values()
    }

    /// Containers created while the projection was away and gone since.
    pub fn gone_created(&self) -> &[GoneRow] {
        &self.gone_created
    }

    /// Their removals.
    pub fn gone_removed(&self) -> &[DeletedRow] {
        &self.gone_removed
    }

    /// Images built or pushed onto nodes.
    pub fn images(&self) -> &[ImageEventRow] {
        &self.images
    }
}
