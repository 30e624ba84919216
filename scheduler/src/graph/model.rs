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

use devctl_proto::{container::ContainerExt, identity::Role, pb};

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
    /// Its record was added by this change (it may succeed an older one).
    pub added: bool,
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

/// The rows of one write, and where the write leaves the projection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    containers: BTreeMap<String, ContainerRow>,
    deleted: BTreeMap<String, DeletedRow>,
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
    pb::ContainerState::try_from(state)
        .unwrap_or(pb::ContainerState::Unspecified)
        .as_str_name()
        .trim_start_matches("CONTAINER_STATE_")
        .to_ascii_lowercase()
}

fn node_state_name(state: i32) -> String {
    pb::NodeState::try_from(state)
        .unwrap_or(pb::NodeState::Unspecified)
        .as_str_name()
        .trim_start_matches("NODE_STATE_")
        .to_ascii_lowercase()
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

/// Splits an image reference into the graph's `name` and `tag` (the tag
/// defaults to `latest`; a digest reference keeps its digest as the tag).
pub fn image_parts(image: &str) -> (String, String) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    // A ':' after the last '/' separates the tag (a registry port does not).
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

impl Batch {
    /// Nothing to write (not even a cursor move).
    pub fn is_empty(&self) -> bool {
        self.changes == 0 && self.users.is_empty()
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
                    let added =
                        before.is_none() || self.containers.get(&after.id).is_some_and(|r| r.added);
                    self.containers
                        .insert(after.id.clone(), container_row(after, e.time, added));
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
        self.changes += 1;
        self.containers
            .insert(c.id.clone(), container_row(c, at, true));
    }

    /// Takes in a node from a snapshot.
    pub fn add_node(&mut self, n: &pb::Node) {
        self.changes += 1;
        self.hosts.insert(n.name.clone(), host_row(n));
    }

    /// Takes in an event of the history (sessions; other events only move
    /// the cursor).
    pub fn add_event(&mut self, ev: &pb::Event) {
        self.changes += 1;
        self.event_sequence = Some(ev.sequence);
        let ty = pb::EventType::try_from(ev.r#type).unwrap_or(pb::EventType::Unspecified);
        let (kind, start) = match ty {
            pb::EventType::ExecStarted => ("exec", true),
            pb::EventType::ExecEnded => ("exec", false),
            pb::EventType::SshStarted => ("ssh", true),
            pb::EventType::SshEnded => ("ssh", false),
            pb::EventType::PortForwardStarted => ("port_forward", true),
            pb::EventType::PortForwardEnded => ("port_forward", false),
            _ => return,
        };
        if ev.session.is_empty() {
            return;
        }
        let row = SessionRow {
            id: ev.session.clone(),
            kind,
            actor: ev.actor.clone(),
            container_id: ev.container_id.clone(),
            at: time_of(ev.time.as_ref(), SystemTime::now()),
        };
        if start {
            self.started.push(row);
        } else {
            self.ended.push(row);
        }
    }

    /// Takes in a caller the API saw.
    pub fn add_user(&mut self, username: &str, role: Role, at: SystemTime) {
        self.users.insert(
            username.to_string(),
            UserRow {
                username: username.to_string(),
                role: role.to_string(),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Diff;

    fn container(id: &str, state: pb::ContainerState) -> pb::Container {
        pb::Container {
            name: "web".into(),
            id: id.into(),
            owner: "alice".into(),
            spec: Some(pb::ContainerSpec {
                image: "devctl/dev:1".into(),
                resources: Some(pb::Resources {
                    milli_cpus: 1500,
                    memory_bytes: 1 << 30,
                }),
                ..Default::default()
            }),
            status: Some(pb::ContainerStatus {
                state: state as i32,
                node: "n1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn entry(revision: u64, change: Change) -> Entry {
        Entry {
            revision,
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(revision),
            change,
        }
    }

    #[test]
    fn the_latest_change_of_a_container_wins_and_a_deletion_keeps_its_last_state() {
        let mut b = Batch::default();
        let pending = container("c1", pb::ContainerState::Pending);
        let running = container("c1", pb::ContainerState::Running);
        b.add_change(&entry(
            1,
            Change::Container(Diff {
                before: None,
                after: Some(pending.clone()),
            }),
        ));
        b.add_change(&entry(
            2,
            Change::Container(Diff {
                before: Some(pending),
                after: Some(running.clone()),
            }),
        ));
        let rows: Vec<_> = b.containers().collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "running");
        assert!(rows[0].added, "still the container's first appearance");
        assert_eq!(rows[0].cpus, 1.5);
        assert_eq!(b.revision, Some(2));
        b.add_change(&entry(
            3,
            Change::Container(Diff {
                before: Some(running),
                after: None,
            }),
        ));
        assert_eq!(b.deleted().count(), 1);
        assert_eq!(b.containers().count(), 1);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn session_events_become_starts_and_ends_and_others_only_move_the_cursor() {
        let mut b = Batch::default();
        let ev = |seq, ty: pb::EventType| pb::Event {
            sequence: seq,
            r#type: ty as i32,
            session: "s1".into(),
            actor: "bob".into(),
            container_id: "c1".into(),
            time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            ..Default::default()
        };
        b.add_event(&ev(4, pb::EventType::ExecStarted));
        b.add_event(&ev(5, pb::EventType::ContainerStopped));
        b.add_event(&ev(6, pb::EventType::ExecEnded));
        assert_eq!(b.started().len(), 1);
        assert_eq!(b.ended().len(), 1);
        assert_eq!(b.started()[0].kind, "exec");
        assert_eq!(b.event_sequence, Some(6));
        assert!(!b.is_empty());
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(
            image_parts("devctl/dev:1"),
            ("devctl/dev".into(), "1".into())
        );
        assert_eq!(
            image_parts("127.0.0.1:5000/team/img"),
            ("127.0.0.1:5000/team/img".into(), "latest".into())
        );
        assert_eq!(
            image_parts("reg:5000/img:2"),
            ("reg:5000/img".into(), "2".into())
        );
        assert_eq!(
            image_parts("img@sha256:ab"),
            ("img".into(), "sha256:ab".into())
        );
    }

    #[test]
    fn statuses_are_short_lowercase_words() {
        assert_eq!(status_name(pb::ContainerState::Lost as i32), "lost");
        assert_eq!(status_name(99), "unspecified");
    }
}
