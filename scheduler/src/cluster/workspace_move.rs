//! Moving a workspace to another node: its data goes agent A → bus pipe →
//! scheduler → bus pipe → agent B as a tar stream, then the record points
//! to B and A's copy (and the stopped engine container that mounted it) is
//! deleted.

use devctl_proto::{container::ContainerExt, pb, validate};
use tokio::sync::watch;

use super::{
    Cluster, Error, error,
    workspaces::{in_use, missing, workspace_not_found},
};

/// A move that passed its checks; the workspace is marked MOVING.
#[derive(Debug)]
pub struct Moving {
    pub(super) workspace: pb::Workspace,
    pub(super) to: String,
    pub(super) actor: String,
    pub(super) progress: watch::Sender<i64>,
}

impl Moving {
    /// Bytes copied so far.
    pub fn progress(&self) -> watch::Receiver<i64> {
        self.progress.subscribe()
    }

    /// The workspace's last measured size (0: never measured).
    pub fn expected(&self) -> i64 {
        self.workspace.size_bytes.max(0)
    }
}

impl Cluster {
    /// Checks that workspace `name` can move to node `to` now and marks it
    /// MOVING (so no create or start uses it meanwhile).
    pub async fn begin_move(&self, name: &str, to: &str, actor: &str) -> Result<Moving, Error> {
        validate::dns_label("name", name)?;
        validate::dns_label("to_node", to)?;
        let (this, name, to, actor) = (
            self.clone(),
            name.to_string(),
            to.to_string(),
            actor.to_string(),
        );
        self.detached(async move {
            let _lock = this
                .shared
                .locks
                .lock(&super::workspaces::workspace_lock(&name))
                .await;
            let w = this
                .store()
                .workspace(&name)?
                .ok_or_else(|| workspace_not_found(&name))?;
            match w.state() {
                pb::WorkspaceState::Missing => return Err(missing(&w, &w.container)),
                pb::WorkspaceState::Moving => {
                    return Err(in_use(&w, "it is being moved already"));
                }
                pb::WorkspaceState::Pending => {
                    return Err(in_use(&w, "it is being made; retry in a moment"));
                }
                _ => {}
            }
            if w.node == to {
                return Err(devctl_proto::validate::InvalidField::new(
                    "to_node",
                    format!("workspace {name:?} is on node {to:?} already"),
                )
                .into());
            }
            let Some(target) = this.shared.nodes.get(&to) else {
                return Err(error::node_not_found(&to));
            };
            if target.cordoned || !this.settles_ready(&to).await {
                return Err(error::node_not_ready(
                    &to,
                    format!("node {to:?} is cordoned or down: move the workspace to a ready node (devctl nodes)"),
                ));
            }
            if !this.settles_ready(&w.node).await {
                return Err(error::node_not_ready(
                    &w.node,
                    format!(
                        "node {:?} of workspace {name:?} is down: its data can only be copied from there; retry when it is back",
                        w.node
                    ),
                ));
            }
            if !w.container.is_empty()
                && let Some(c) = this.store().container(&w.container)?
                && (c.status().state == pb::ContainerState::Running as i32
                    || c.status().state == pb::ContainerState::Pending as i32)
            {
                return Err(in_use(
                    &w,
                    &format!("stop it first (devctl stop {})", w.container),
                ));
            }
            let w = this
                .store()
                .modify_workspace(&name, |w| {
                    w.state = pb::WorkspaceState::Moving as i32;
                    true
                })
                .await?
                .ok_or_else(|| workspace_not_found(&name))?;
            Ok(Moving {
                workspace: w,
                to,
                actor,
                progress: watch::channel(0).0,
            })
        })
        .await
    }

    /// Copies the data, then switches the record to the new node and
    /// deletes the old copy. On failure the workspace stays where it was
    /// (READY again) and the partial copy is deleted.
    pub async fn finish_move(&self, moving: Moving) -> Result<pb::Workspace, Error> {
        let this = self.clone();
        self.detached(async move { this.move_now(moving).await })
            .await
    }
}

impl Cluster {
    async fn move_now(&self, moving: Moving) -> Result<pb::Workspace, Error> {
        let name = moving.workspace.name.clone();
        tracing::info!(workspace = %name, to = %moving.to, actor = %moving.actor, "move");
        self.store()
            .modify_workspace(&name, |w| {
                w.state = pb::WorkspaceState::Ready as i32;
                true
            })
            .await?;
        Err(Error::internal("TODO move"))
    }
}
