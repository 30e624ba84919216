//! `devctl.v1.WorkspaceService`: a developer sees, moves and deletes their
//! own workspaces; admins all; viewers read.

use devctl_proto::{
    identity::Identity,
    pb::{self, workspace_service_server::WorkspaceService},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::{
    audit,
    auth::{Scope, caller, may_write},
    status::refusal,
};
use crate::cluster::Cluster;

/// How often a move reports its progress at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The workspace service over a cluster.
#[derive(Debug, Clone)]
pub struct WorkspaceApi {
    cluster: Cluster,
}

impl WorkspaceApi {
    /// The service for `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

/// Refuses `id` reaching workspace `w` (a developer and another's).
fn may_see(id: &Identity, method: &str, w: &pb::Workspace) -> Result<(), Status> {
    if Scope::of(id).allows(&w.owner) {
        return Ok(());
    }
    Err(refusal(
        Code::PermissionDenied,
        format!(
            "{id} may not call {method} on workspace {:?}: it belongs to {}; developers act on their own workspaces (an admin can act for anyone)",
            w.name, w.owner
        ),
        "NOT_OWNER",
        &[
            ("workspace", w.name.clone()),
            ("method", method.to_string()),
        ],
    ))
}

#[tonic::async_trait]
impl WorkspaceService for WorkspaceApi {
    async fn list_workspaces(
        &self,
        req: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().owner);
        let mut r = req.into_inner();
        if let Scope::Owner(me) = Scope::of(&id) {
            if !r.owner.is_empty() && r.owner != me {
                return Err(Status::permission_denied(format!(
                    "{id} may only list their own workspaces: drop --owner {} (an admin can list anyone's)",
                    r.owner
                )));
            }
            r.owner = me;
        }
        let node = (!r.node.is_empty()).then_some(r.node.as_str());
        let owner = (!r.owner.is_empty()).then_some(r.owner.as_str());
        let workspaces = self.cluster.workspaces(node, owner)?;
        Ok(Response::new(pb::ListWorkspacesResponse { workspaces }))
    }

    async fn get_workspace(
        &self,
        req: Request<pb::GetWorkspaceRequest>,
    ) -> Result<Response<pb::Workspace>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        let w = self.cluster.workspace(&req.get_ref().name)?;
        may_see(&id, "GetWorkspace", &w)?;
        Ok(Response::new(w))
    }

    async fn delete_workspace(
        &self,
        req: Request<pb::DeleteWorkspaceRequest>,
    ) -> Result<Response<pb::Workspace>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_write(&id, "DeleteWorkspace")?;
        let w = self.cluster.workspace(&req.get_ref().name)?;
        may_see(&id, "DeleteWorkspace", &w)?;
        Ok(Response::new(
            self.cluster.delete_workspace(&w.name, &id.name).await?,
        ))
    }

    type MoveWorkspaceStream = ReceiverStream<Result<pb::MoveWorkspaceProgress, Status>>;

    async fn move_workspace(
        &self,
        req: Request<pb::MoveWorkspaceRequest>,
    ) -> Result<Response<Self::MoveWorkspaceStream>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_write(&id, "MoveWorkspace")?;
        let r = req.into_inner();
        let w = self.cluster.workspace(&r.name)?;
        may_see(&id, "MoveWorkspace", &w)?;
        // Refusals (in use, node not ready) come back as the call's status.
        let moving = self
            .cluster
            .begin_move(&r.name, &r.to_node, &id.name)
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let mut progress = moving.progress();
            let expected = moving.expected();
            let done = cluster.finish_move(moving);
            tokio::pin!(done);
            // At most a few progress messages a second, however small the
            // chunks.
            let mut last_sent: Option<tokio::time::Instant> = None;
            let mut progress_open = true;
            loop {
                tokio::select! {
                    result = &mut done => {
                        let item = result
                            .map(|w| pb::MoveWorkspaceProgress {
                                bytes_copied: *progress.borrow(),
                                bytes_expected: expected,
                                done: true,
                                workspace: Some(w),
                            })
                            .map_err(Status::from);
                        let _ = tx.send(item).await;
                        break;
                    }
                    changed = progress.changed(), if progress_open => {
                        if changed.is_err() {
                            // The copy is over: only the outcome is left.
                            progress_open = false;
                            continue;
                        }
                        let copied = *progress.borrow_and_update();
                        if last_sent.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                            continue;
                        }
                        last_sent = Some(tokio::time::Instant::now());
                        // A client that went away does not stop the move:
                        // it completes (or fails and rolls back) anyway.
                        let _ = tx.try_send(Ok(pb::MoveWorkspaceProgress {
                            bytes_copied: copied,
                            bytes_expected: expected,
                            done: false,
                            workspace: None,
                        }));
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
