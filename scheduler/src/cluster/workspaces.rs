//! Workspaces: the named engine volume every container gets, mounted at
//! `spec.workspace_path`, that outlives the container.
//!
//! A workspace lives on one node. Its record (store table `workspaces`)
//! names the node and the container using it. A create attaches the
//! workspace `spec.workspace` names (default: the container's name): an
//! existing one pins placement to its node; a new one is recorded on the
//! node placement chose. The agent is told whether the volume must exist
//! already, so a container never starts silently on an empty volume where
//! its data should be. Start refuses (FAILED_PRECONDITION, reason
//! `WORKSPACE_NODE_UNAVAILABLE`) when the workspace's node is cordoned or
//! down, naming `devctl workspaces move`; after a move, start places the
//! container on the workspace's new node. `rm` keeps the workspace;
//! `rm --purge` and DeleteWorkspace delete it. Nodes' inventories report the
//! volumes and their sizes: sizes are recorded, and a volume gone from its
//! node marks the record MISSING.
//!
//! One piece: a workspace's life in the cluster. It covers the plan at
//! create, the settle after it, start refusals, purge and move, all under the
//! same workspace record transitions.

use std::{collections::HashMap, time::SystemTime};

use devctl_proto::{
    container::ContainerExt,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    validate::{self, InvalidField},
};

use super::{Cluster, Error, ErrorKind, error::agent_error, now};

/// Where a workspace is mounted unless the spec says otherwise.
pub const DEFAULT_WORKSPACE_PATH: &str = "/workspace";

/// What a create does about its workspace.
#[derive(Debug, Clone)]
pub(super) enum WorkspacePlan {
    /// A new workspace, made on the node placement chooses.
    New(String),
    /// An existing workspace, on its node.
    Existing(Box<pb::Workspace>),
}

impl WorkspacePlan {
    /// The node placement must use, if any.
    pub(super) fn pin(&self) -> Option<&str> {
        match self {
            WorkspacePlan::Existing(w) => Some(&w.node),
            _ => None,
        }
    }
}

/// Checks the workspace fields and mounts of a create request.
pub(super) fn validate_workspace_fields(s: &pb::ContainerSpec) -> Result<(), InvalidField> {
    if !s.workspace.is_empty() {
        validate::dns_label("container.spec.workspace", &s.workspace)?;
    }
    if !s.workspace_path.is_empty() {
        container_path("container.spec.workspace_path", &s.workspace_path)?;
    }
    validate::max_count("container.spec.mounts", s.mounts.len(), 16)?;
    for (i, m) in s.mounts.iter().enumerate() {
        let field = format!("container.spec.mounts[{i}]");
        container_path(&format!("{field}.target"), &m.target)?;
        match &m.source {
            Some(pb::mount::Source::Volume(v)) => {
                let ok = !v.is_empty()
                    && v.len() <= 128
                    && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !ok || v.starts_with("devctl-") {
                    return Err(InvalidField::new(
                        format!("{field}.volume"),
                        format!(
                            "{v:?} is not a volume name: use letters, digits, '_', '.', '-' (not starting with \"devctl-\", which devctl keeps for its own)"
                        ),
                    ));
                }
            }
            Some(pb::mount::Source::HostPath(p)) => {
                container_path(&format!("{field}.host_path"), p)?;
            }
            None => {
                return Err(InvalidField::new(
                    field,
                    "needs a source: a volume name or a host path",
                ));
            }
        }
        if m.target == s.workspace_path
            || (s.workspace_path.is_empty() && m.target == DEFAULT_WORKSPACE_PATH)
        {
            return Err(InvalidField::new(
                format!("{field}.target"),
                format!(
                    "{} is where the workspace is mounted; choose another target or set --workspace-path",
                    m.target
                ),
            ));
        }
    }
    Ok(())
}

/// An absolute, normalized path (no `..`, not `/`).
fn container_path(field: &str, p: &str) -> Result<(), InvalidField> {
    validate::no_control(field, p)?;
    let ok = p.starts_with('/')
        && p.len() > 1
        && p.len() <= 1024
        && !p.contains(':')
        && !p.split('/').any(|c| c == ".." || c == ".")
        && !p.contains("//")
        && !p.ends_with('/');
    if !ok {
        return Err(InvalidField::new(
            field,
            format!(
                "{p:?} is not an absolute path such as /workspace (no \"..\", \":\", trailing \"/\", and not \"/\" itself)"
            ),
        ));
    }
    Ok(())
}

/// The engine volume name of workspace `name` on `node`. The node is part
/// of it because one engine may serve several nodes (as agents sharing an
/// engine do): each node's workspaces are its own volumes, and a move
/// between two such nodes copies, as between two hosts. Both are DNS
/// labels: `_` cannot occur in either, so the name is unambiguous.
pub fn volume_name(node: &str, name: &str) -> String {
    devctl_proto::labels::workspace_volume(node, name)
}

/// The workspace is in use by another container.
pub(super) fn in_use(w: &pb::Workspace, what: &str) -> Error {
    Error::new(
        ErrorKind::WorkspaceInUse {
            workspace: w.name.clone(),
            container: w.container.clone(),
        },
        format!(
            "workspace {:?} is used by container {:?}; {what}",
            w.name, w.container
        ),
    )
}

/// No workspace named `name`.
pub(super) fn workspace_not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound {
            what: "workspace",
            name: name.to_string(),
        },
        format!("workspace {name:?} not found; `devctl workspaces ls` lists workspaces"),
    )
}

/// `w`'s node cannot run its container now (`why`: cordoned, down).
pub(super) fn node_unavailable(w: &pb::Workspace, container: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::WorkspaceNodeUnavailable {
            workspace: w.name.clone(),
            node: w.node.clone(),
        },
        format!(
            "container {container:?} keeps its work in workspace {:?}, which lives on node {:?}, and that node is {why}; \
             it is not started elsewhere without its data: move the workspace (devctl workspaces move {} --to NODE), then start it, \
             or wait for the node",
            w.name, w.node, w.name
        ),
    )
}

/// `w`'s volume is gone from its node.
pub(super) fn missing(w: &pb::Workspace, container: &str) -> Error {
    Error::new(
        ErrorKind::WorkspaceMissing {
            workspace: w.name.clone(),
            node: w.node.clone(),
        },
        format!(
            "workspace {:?} of container {container:?} is gone from node {:?} (its volume was deleted outside devctl); \
             the container is not started on an empty volume: remove the workspace record (devctl workspaces rm {}) to start afresh",
            w.name, w.node, w.name
        ),
    )
}

impl Cluster {
    /// Decides what the create of container `name` (owned by `owner`,
    /// with `spec`) does about its workspace, filling in the spec's
    /// defaults. Checks ownership, use and the workspace's node.
    pub(super) fn plan_workspace(
        &self,
        name: &str,
        owner: &str,
        admin: bool,
        spec: &mut pb::ContainerSpec,
    ) -> Result<WorkspacePlan, Error> {
        if spec.workspace.is_empty() {
            spec.workspace = name.to_string();
        }
        if spec.workspace_path.is_empty() {
            spec.workspace_path = DEFAULT_WORKSPACE_PATH.to_string();
        }
        let Some(w) = self.store().workspace(&spec.workspace)? else {
            return Ok(WorkspacePlan::New(spec.workspace.clone()));
        };
        if w.owner != owner && !admin {
            return Err(Error::new(
                ErrorKind::WorkspaceNotYours {
                    workspace: w.name.clone(),
                },
                format!(
                    "workspace {:?} belongs to {}; choose another workspace name (--workspace) or container name",
                    w.name, w.owner
                ),
            ));
        }
        if !w.container.is_empty() && w.container != name {
            return Err(in_use(
                &w,
                "remove that container first, or choose another workspace (--workspace)",
            ));
        }
        match w.state() {
            pb::WorkspaceState::Missing => return Err(missing(&w, name)),
            pb::WorkspaceState::Moving => {
                return Err(Error::new(
                    ErrorKind::WorkspaceInUse {
                        workspace: w.name.clone(),
                        container: String::new(),
                    },
                    format!(
                        "workspace {:?} is being moved; retry once the move is done",
                        w.name
                    ),
                ));
            }
            _ => {}
        }
        if !spec.node.is_empty() && spec.node != w.node {
            return Err(InvalidField::new(
                "container.spec.node",
                format!(
                    "workspace {:?} lives on node {:?}: omit --node, or move the workspace first (devctl workspaces move {} --to {})",
                    w.name, w.node, w.name, spec.node
                ),
            )
            .into());
        }
        match self.shared.nodes.get(&w.node) {
            Some(n) if n.cordoned => return Err(node_unavailable(&w, name, "cordoned")),
            Some(_) if self.shared.nodes.is_ready(&w.node) => {}
            // Unknown right after a restart: placement waits for it.
            Some(n) if n.state() == pb::NodeState::Unknown => {}
            _ => return Err(node_unavailable(&w, name, "down")),
        }
        Ok(WorkspacePlan::Existing(Box::new(w)))
    }

    /// Records the workspace of a create just placed on `node` (the
    /// caller holds the placement lock, before the container's record is
    /// inserted).
    pub(super) async fn claim_workspace(
        &self,
        plan: &WorkspacePlan,
        c: &pb::Container,
    ) -> Result<(), Error> {
        match plan {
            WorkspacePlan::New(ws) => {
                let node = &c.status().node;
                if !self.shared.nodes.knows_workspaces(node) {
                    return Err(Error::new(
                        ErrorKind::AgentTooOld { node: node.clone() },
                        format!(
                            "the agent of node {node:?} predates workspaces (it would not mount one): upgrade it, or pick another node (--node)"
                        ),
                    ));
                }
                // Another create may have made it since the plan.
                if let Some(w) = self.store().workspace(ws)? {
                    return Err(in_use(&w, "choose another workspace (--workspace)"));
                }
                let node = c.status().node.clone();
                let w = pb::Workspace {
                    name: ws.clone(),
                    id: uuid::Uuid::new_v4().to_string(),
                    owner: c.owner.clone(),
                    volume: volume_name(&node, ws),
                    node,
                    state: pb::WorkspaceState::Pending as i32,
                    container: c.name.clone(),
                    create_time: now(),
                    ..Default::default()
                };
                self.store().put_workspace(w).await?;
            }
            WorkspacePlan::Existing(w) => {
                // A DeleteWorkspace in flight finishes first (then the
                // record is gone and the create fails as not found).
                let _ws = self.shared.locks.lock(&workspace_lock(&w.name)).await;
                let name = c.name.clone();
                let taken = std::sync::Arc::new(std::sync::Mutex::new(None));
                let seen = std::sync::Arc::clone(&taken);
                self.store()
                    .modify_workspace(&w.name, move |w| {
                        if !w.container.is_empty() && w.container != name {
                            *seen.lock().expect("poisoned") = Some(w.clone());
                            return false;
                        }
                        w.container = name;
                        true
                    })
                    .await?
                    .ok_or_else(|| workspace_not_found(&w.name))?;
                if let Some(w) = taken.lock().expect("poisoned").take() {
                    return Err(in_use(&w, "choose another workspace (--workspace)"));
                }
            }
        }
        Ok(())
    }

    /// The attach instruction for the agent creating `c`, from its
    /// workspace's record.
    pub(super) fn workspace_attach(
        &self,
        c: &pb::Container,
    ) -> Result<Option<pb::WorkspaceAttach>, Error> {
        let ws = &c.spec().workspace;
        if ws.is_empty() {
            return Ok(None);
        }
        let w = self
            .store()
            .workspace(ws)?
            .ok_or_else(|| workspace_not_found(ws))?;
        Ok(Some(pb::WorkspaceAttach {
            name: w.name.clone(),
            id: w.id.clone(),
            must_exist: w.state() != pb::WorkspaceState::Pending,
            owner: w.owner.clone(),
        }))
    }

    /// After a create's outcome: the workspace is ready and in use
    /// (`ok`), or released again (a new one is forgotten: the agent
    /// removed the volume it made).
    pub(super) async fn settle_workspace(
        &self,
        plan: &WorkspacePlan,
        c: &pb::Container,
        ok: bool,
    ) -> Result<(), Error> {
        let ws = match plan {
            WorkspacePlan::New(ws) if !ok => {
                self.store().delete_workspace(ws).await?;
                return Ok(());
            }
            WorkspacePlan::New(ws) => ws.clone(),
            WorkspacePlan::Existing(w) => w.name.clone(),
        };
        let name = c.name.clone();
        let created = matches!(plan, WorkspacePlan::New(_)) && ok;
        let w = self
            .store()
            .modify_workspace(&ws, move |w| {
                if ok {
                    w.state = pb::WorkspaceState::Ready as i32;
                    w.last_used_time = now();
                } else if w.container == name {
                    w.container.clear();
                }
                true
            })
            .await?;
        if created && let Some(w) = w {
            let event = pb::Event {
                time: now(),
                r#type: pb::EventType::WorkspaceCreated as i32,
                container: c.name.clone(),
                container_id: c.id.clone(),
                node: w.node.clone(),
                actor: c.owner.clone(),
                reason: "created".into(),
                message: format!("workspace {} made on node {}", w.name, w.node),
                ..Default::default()
            };
            let _ = self
                .emit(event, format!("workspace-created-{}", w.id))
                .await;
        }
        Ok(())
    }

    /// The node said workspace `name`'s volume is gone.
    pub(super) async fn mark_workspace_missing(&self, name: &str) -> Result<(), Error> {
        self.store()
            .modify_workspace(name, |w| {
                w.state = pb::WorkspaceState::Missing as i32;
                true
            })
            .await?;
        Ok(())
    }

    /// Container `c` is gone: its workspace is free (kept on its node).
    pub(super) async fn release_workspace(&self, c: &pb::Container) -> Result<(), Error> {
        let ws = c.spec().workspace.clone();
        if ws.is_empty() {
            return Ok(());
        }
        let name = c.name.clone();
        self.store()
            .modify_workspace(&ws, move |w| {
                if w.container != name {
                    return false;
                }
                w.container.clear();
                w.last_used_time = now();
                true
            })
            .await?;
        Ok(())
    }

    /// Before a start of `c` (its lock held): the node its workspace
    /// lives on, when that is another than `c`'s (moved: `c` is placed
    /// there), or a refusal when that node cannot run it.
    pub(super) async fn workspace_start_check(
        &self,
        c: &pb::Container,
    ) -> Result<Option<String>, Error> {
        let ws = &c.spec().workspace;
        if ws.is_empty() || c.status().state == pb::ContainerState::Running as i32 {
            return Ok(None);
        }
        let Some(w) = self.store().workspace(ws)? else {
            return Ok(None);
        };
        match w.state() {
            pb::WorkspaceState::Missing => return Err(missing(&w, &c.name)),
            pb::WorkspaceState::Moving => {
                return Err(in_use(&w, "it is being moved; retry once the move is done"));
            }
            _ => {}
        }
        if self.shared.nodes.get(&w.node).is_some_and(|n| n.cordoned) {
            return Err(node_unavailable(&w, &c.name, "cordoned"));
        }
        if !self.settles_ready(&w.node).await {
            return Err(node_unavailable(&w, &c.name, "down"));
        }
        Ok((w.node != c.status().node).then(|| w.node.clone()))
    }

    /// Deletes workspace `name` from its node and the records: refused
    /// while a container uses it (`except`: the container being purged).
    pub(super) async fn delete_workspace_now(
        &self,
        name: &str,
        except: Option<&str>,
        actor: &str,
    ) -> Result<pb::Workspace, Error> {
        let w = self
            .store()
            .workspace(name)?
            .ok_or_else(|| workspace_not_found(name))?;
        if !w.container.is_empty() && Some(w.container.as_str()) != except {
            return Err(in_use(
                &w,
                &format!(
                    "remove the container first (devctl rm {0}, or devctl rm --purge {0} to delete both)",
                    w.container
                ),
            ));
        }
        if w.state() != pb::WorkspaceState::Missing {
            if !self.settles_ready(&w.node).await {
                return Err(super::error::node_not_ready(
                    &w.node,
                    format!(
                        "node {:?} of workspace {:?} is down; its data can only be deleted there: retry when it is back",
                        w.node, w.name
                    ),
                ));
            }
            let command = Command::RemoveWorkspace(pb::RemoveWorkspaceCommand {
                name: w.name.clone(),
            });
            match self.send(&w.node, command, 0).await? {
                Reply::Removed(_) => {}
                Reply::Error(e) if e.code == pb::AgentErrorCode::ContainerNotFound as i32 => {}
                other => {
                    let stand_in = pb::Container {
                        name: w.container.clone(),
                        status: Some(pb::ContainerStatus {
                            node: w.node.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    return Err(agent_error(other, &stand_in));
                }
            }
        }
        self.store().delete_workspace(name).await?;
        tracing::info!(workspace = name, node = %w.node, actor, "workspace deleted");
        let event = pb::Event {
            time: now(),
            r#type: pb::EventType::WorkspaceDeleted as i32,
            container: w.container.clone(),
            node: w.node.clone(),
            actor: actor.to_string(),
            reason: "deleted".into(),
            message: format!("workspace {} deleted from node {}", w.name, w.node),
            ..Default::default()
        };
        let _ = self
            .emit(event, format!("workspace-deleted-{}", w.id))
            .await;
        Ok(w)
    }

    /// Deletes workspace `name` (DeleteWorkspace).
    pub async fn delete_workspace(&self, name: &str, actor: &str) -> Result<pb::Workspace, Error> {
        validate::dns_label("name", name)?;
        let (this, name, actor) = (self.clone(), name.to_string(), actor.to_string());
        self.detached(async move {
            let _lock = this.shared.locks.lock(&workspace_lock(&name)).await;
            this.delete_workspace_now(&name, None, &actor).await
        })
        .await
    }

    /// One workspace.
    pub fn workspace(&self, name: &str) -> Result<pb::Workspace, Error> {
        validate::dns_label("name", name)?;
        self.store()
            .workspace(name)?
            .ok_or_else(|| workspace_not_found(name))
    }

    /// Workspaces on `node` (if set) owned by `owner` (if set).
    pub fn workspaces(
        &self,
        node: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Vec<pb::Workspace>, Error> {
        Ok(self
            .store()
            .workspaces()?
            .into_iter()
            .filter(|w| node.is_none_or(|n| n == w.node) && owner.is_none_or(|o| o == w.owner))
            .collect())
    }

    /// What `node`'s inventory says of its workspace volumes: sizes are
    /// recorded; a ready workspace whose volume is gone is marked missing
    /// (and one that is back, ready again).
    pub(super) async fn sync_workspaces(
        &self,
        node: &str,
        seen: &[pb::EngineWorkspace],
        asked_at: SystemTime,
    ) -> Result<(), Error> {
        // An agent from before workspaces reports none: that says nothing.
        if !self.shared.nodes.knows_workspaces(node) {
            return Ok(());
        }
        let seen: HashMap<&str, &pb::EngineWorkspace> =
            seen.iter().map(|w| (w.name.as_str(), w)).collect();
        for w in self.workspaces(Some(node), None)? {
            let found = seen.get(w.name.as_str()).copied().cloned();
            let gone = found.is_none() && w.state() == pb::WorkspaceState::Ready;
            let node_name = node.to_string();
            let changed = self
                .store()
                .modify_workspace(&w.name, move |w| {
                    // Changed since the inventory was asked for (made,
                    // used, moved): newer than what it says.
                    let newer = |t: &Option<prost_types::Timestamp>| {
                        t.and_then(|t| SystemTime::try_from(t).ok())
                            .is_some_and(|t| t >= asked_at)
                    };
                    if w.node != node_name || newer(&w.last_used_time) || newer(&w.create_time) {
                        return false;
                    }
                    match (&found, w.state()) {
                        (None, pb::WorkspaceState::Ready) => {
                            w.state = pb::WorkspaceState::Missing as i32;
                            true
                        }
                        (Some(e), state) => {
                            if state == pb::WorkspaceState::Missing {
                                w.state = pb::WorkspaceState::Ready as i32;
                            }
                            if e.size_bytes >= 0 && e.size_bytes != w.size_bytes {
                                w.size_bytes = e.size_bytes;
                                w.size_time = Some(SystemTime::now().into());
                            }
                            true
                        }
                        _ => false,
                    }
                })
                .await?;
            if gone && let Some(w) = changed.filter(|w| w.state() == pb::WorkspaceState::Missing) {
                tracing::warn!(workspace = %w.name, node, "workspace volume is gone from its node");
                let event = pb::Event {
                    time: now(),
                    r#type: pb::EventType::WorkspaceMissing as i32,
                    container: w.container.clone(),
                    node: node.to_string(),
                    reason: "volume_gone".into(),
                    message: format!(
                        "the volume of workspace {} is gone from node {node} (deleted outside devctl)",
                        w.name
                    ),
                    ..Default::default()
                };
                let _ = self
                    .emit(
                        event,
                        format!("workspace-missing-{}-{}", w.id, uuid::Uuid::new_v4()),
                    )
                    .await;
            }
        }
        Ok(())
    }
}

/// The key of a workspace's lock among the containers' (names are DNS
/// labels, so this cannot be a container's).
pub(super) fn workspace_lock(name: &str) -> String {
    format!("workspace/{name}")
}
