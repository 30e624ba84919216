//! Moving a workspace to another node: its data goes agent A → bus pipe →
//! scheduler → bus pipe → agent B as a tar stream, then the record points
//! to B and A's copy (and the stopped engine container that mounted it) is
//! deleted.

use devctl_proto::{
    container::ContainerExt,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    validate,
};
use tokio::sync::watch;

use super::{
    Cluster, Error, ErrorKind,
    error::{self, agent_error},
    link::TunnelPipes,
    now,
    workspaces::{in_use, missing, volume_name, workspace_not_found},
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
    /// At start: moves the previous scheduler process left unfinished
    /// (MOVING) are over. The record switches node only after the copy
    /// succeeded, so each workspace is whole where its record says: it is
    /// READY there again (a partial copy on the target is replaced by the
    /// next move there).
    pub async fn recover_moves(&self) -> Result<(), crate::store::StoreError> {
        for w in self.store().workspaces()? {
            if w.state() == pb::WorkspaceState::Moving {
                tracing::warn!(workspace = %w.name, node = %w.node, "a move was interrupted by the scheduler's stop; the workspace stays where it was");
                self.store()
                    .modify_workspace(&w.name, |w| {
                        w.state = pb::WorkspaceState::Ready as i32;
                        true
                    })
                    .await?;
            }
        }
        Ok(())
    }

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
        let Moving {
            workspace: w,
            to,
            actor,
            progress,
        } = moving;
        tracing::info!(workspace = %w.name, from = %w.node, to = %to, actor = %actor, "moving workspace");
        let started = std::time::Instant::now();
        if let Err(e) = self.copy_workspace(&w, &to, &progress).await {
            tracing::warn!(workspace = %w.name, to = %to, error = %e, "moving workspace failed; it stays where it was");
            self.store()
                .modify_workspace(&w.name, |x| {
                    x.state = pb::WorkspaceState::Ready as i32;
                    true
                })
                .await?;
            return Err(e.annotate(&format!(
                "workspace {:?} stays on node {:?}, unchanged",
                w.name, w.node
            )));
        }
        let from = w.node.clone();
        let (name, target) = (w.name.clone(), to.clone());
        let moved = self
            .store()
            .modify_workspace(&w.name, move |x| {
                x.volume = volume_name(&target, &name);
                x.node = target;
                x.state = pb::WorkspaceState::Ready as i32;
                x.last_used_time = now();
                true
            })
            .await?
            .ok_or_else(|| workspace_not_found(&w.name))?;
        tracing::info!(workspace = %w.name, from = %from, to = %to, bytes = *progress.borrow(), elapsed = ?started.elapsed(), "workspace moved");
        let leftover = self.drop_old_copy(&moved, &from).await.err();
        let mut message = format!(
            "workspace {} moved from node {from} to node {to} by {actor}",
            w.name
        );
        if let Some(e) = &leftover {
            message.push_str(&format!(
                "; its old copy on {from} could not be deleted ({e}): delete volume {} there by hand",
                volume_name(&from, &w.name)
            ));
        }
        let event = pb::Event {
            time: now(),
            r#type: pb::EventType::WorkspaceMoved as i32,
            container: w.container.clone(),
            node: to.clone(),
            actor: actor.clone(),
            reason: "moved".into(),
            message,
            ..Default::default()
        };
        let _ = self
            .emit(event, format!("workspace-moved-{}", uuid::Uuid::new_v4()))
            .await;
        Ok(moved)
    }

    /// Copies `w`'s data from its node to `to`: the sending agent's stream
    /// relayed chunk by chunk into the receiving agent's pipe (each at its
    /// reader's pace), then the receiver's outcome.
    async fn copy_workspace(
        &self,
        w: &pb::Workspace,
        to: &str,
        progress: &watch::Sender<i64>,
    ) -> Result<(), Error> {
        let timeout = self.shared.settings.command_timeout;
        let stand_in = |node: &str| pb::Container {
            name: w.container.clone(),
            spec: Some(pb::ContainerSpec {
                workspace: w.name.clone(),
                ..Default::default()
            }),
            status: Some(pb::ContainerStatus {
                node: node.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = w.name.clone();
        let build = move |setup, _id: &str| {
            Command::SendWorkspace(pb::SendWorkspaceCommand {
                name,
                stream: Some(setup),
            })
        };
        let mut reader = match self
            .shared
            .link
            .open_stream(&w.node, Box::new(build), timeout)
            .await
        {
            Ok(r) => r,
            Err(Ok(reply)) => return Err(agent_error(reply, &stand_in(&w.node))),
            Err(Err(e)) => return Err(e.into()),
        };
        let receive = pb::ReceiveWorkspaceCommand {
            workspace: Some(pb::WorkspaceAttach {
                name: w.name.clone(),
                id: w.id.clone(),
                must_exist: false,
                owner: w.owner.clone(),
            }),
            up: None,
            down: None,
        };
        let TunnelPipes {
            mut up, mut down, ..
        } = match self.shared.link.open_receive(to, receive, timeout).await {
            Ok(p) => p,
            Err(not) => {
                reader.close().await;
                return Err(match not {
                    Ok(reply) => agent_error(reply, &stand_in(to)),
                    Err(e) => e.into(),
                });
            }
        };
        let failed = |what: String| Error::new(ErrorKind::Internal, what);
        let mut copied = 0i64;
        // The receiver's early end (a failure) stops the relay.
        let relayed: Result<(), Error> = loop {
            let chunk = tokio::select! {
                biased;
                outcome = up.recv() => {
                    break Err(failed(format!("node {to} stopped receiving: {}", outcome_text(outcome))));
                }
                chunk = reader.next() => chunk,
            };
            match chunk {
                None => {
                    down.finish(None).await;
                    break Ok(());
                }
                Some(Err(e)) => {
                    let why = format!("reading the workspace on node {}: {e}", w.node);
                    down.finish(Some(why.clone())).await;
                    break Err(failed(why));
                }
                Some(Ok((_, data))) => {
                    tokio::select! {
                        biased;
                        outcome = up.recv() => {
                            break Err(failed(format!("node {to} stopped receiving: {}", outcome_text(outcome))));
                        }
                        sent = down.send(&data) => if let Err(e) = sent {
                            break Err(failed(format!("sending the workspace to node {to}: {e}")));
                        }
                    }
                    copied += data.len() as i64;
                    progress.send_replace(copied);
                }
            }
        };
        if let Err(e) = relayed {
            reader.close().await;
            down.finish(Some("the move failed".into())).await;
            up.cancel().await;
            return Err(e);
        }
        // The receiver's outcome, unless it falls silent first.
        let outcome = tokio::select! {
            biased;
            outcome = up.recv() => outcome,
            lost = down.closed() => Some(Err(lost)),
        };
        up.cancel().await;
        match outcome {
            None => Ok(()),
            other => Err(failed(format!(
                "node {to} could not store the workspace: {}",
                outcome_text(other)
            ))),
        }
    }

    /// Deletes what is left of workspace `w` on `from` after its move: the
    /// stopped engine container that mounted it (its record stays: the
    /// next start makes it on the workspace's node), then the volume.
    async fn drop_old_copy(&self, w: &pb::Workspace, from: &str) -> Result<(), Error> {
        if !w.container.is_empty() {
            let _lock = self.shared.locks.lock(&w.container).await;
            if let Some(c) = self.store().container(&w.container)?
                && c.status().node == from
                && c.status().state != pb::ContainerState::Running as i32
            {
                self.remove_from(from, &c).await?;
            }
        }
        let command = Command::RemoveWorkspace(pb::RemoveWorkspaceCommand {
            name: w.name.clone(),
        });
        match self.send(from, command, 0).await? {
            Reply::Removed(_) => Ok(()),
            Reply::Error(e) if e.code == pb::AgentErrorCode::ContainerNotFound as i32 => Ok(()),
            Reply::Error(e) => Err(Error::new(ErrorKind::Internal, e.message)),
            other => Err(Error::internal(format!("unexpected reply {other:?}"))),
        }
    }
}

/// What a pipe's end says, for a message.
fn outcome_text(outcome: Option<Result<Vec<u8>, devctl_proto::pipe::PipeError>>) -> String {
    match outcome {
        None => "it ended without saying why".into(),
        Some(Ok(_)) => "it sent data where only an outcome was expected".into(),
        Some(Err(e)) => e.to_string(),
    }
}
