//! `devctl.v1.ContainerService`.

use devctl_proto::container::ContainerExt;
use devctl_proto::pb::{self, container_service_server::ContainerService};
use tonic::{Request, Response, Status};

use super::{
    audit,
    auth::{Scope, caller, may_operate, may_see, may_write, redacted},
};
use crate::{
    cluster::{Cluster, CreateOptions},
    placement::Strategy,
};

/// The container service over a cluster.
#[derive(Debug, Clone)]
pub struct ContainerApi {
    cluster: Cluster,
}

impl ContainerApi {
    /// The service for `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl ContainerService for ContainerApi {
    async fn create_container(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let id = caller(&req)?;
        let name = req.get_ref().container.as_ref().map(|c| c.name.as_str());
        audit::target(&req, name.unwrap_or_default());
        may_write(&id, "CreateContainer")?;
        let r = req.into_inner();
        let strategy = match r.strategy() {
            pb::PlacementStrategy::Unspecified => None,
            pb::PlacementStrategy::Spread => Some(Strategy::Spread),
            pb::PlacementStrategy::Binpack => Some(Strategy::Binpack),
        };
        let request_id = (!r.request_id.is_empty()).then(|| r.request_id.clone());
        if let Some(id) = &request_id
            && (id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(Status::invalid_argument(
                "request_id: use at most 128 printable characters without spaces (e.g. a UUID)",
            ));
        }
        let options = CreateOptions {
            dry_run: r.dry_run,
            strategy,
            request_id,
            role: Some(id.role),
        };
        let spec = r
            .container
            .ok_or_else(|| Status::invalid_argument("container: is required"))?;
        Ok(Response::new(
            self.cluster.create(spec, &id.name, options).await?,
        ))
    }

    async fn get_container(
        &self,
        req: Request<pb::GetContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        let c = self.cluster.get(&req.get_ref().name)?;
        may_see(&id, "GetContainer", &c)?;
        Ok(Response::new(redacted(&id, c)))
    }

    async fn list_containers(
        &self,
        req: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().owner);
        let mut r = req.into_inner();
        // A developer lists their own containers.
        if let Scope::Owner(me) = Scope::of(&id) {
            if !r.owner.is_empty() && r.owner != me {
                return Err(Status::permission_denied(format!(
                    "{id} may only list their own containers: drop --owner {} (an admin can list anyone's)",
                    r.owner
                )));
            }
            r.owner = me;
        }
        let mut page = self.cluster.list(&r)?;
        page.containers = page
            .containers
            .into_iter()
            .map(|c| redacted(&id, c))
            .collect();
        Ok(Response::new(page))
    }

    async fn start_container(
        &self,
        req: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_operate(
            &id,
            "StartContainer",
            &self.cluster.get(&req.get_ref().name)?,
        )?;
        let r = req.into_inner();
        Ok(Response::new(self.cluster.start(&r.name, &id.name).await?))
    }

    async fn stop_container(
        &self,
        req: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_operate(
            &id,
            "StopContainer",
            &self.cluster.get(&req.get_ref().name)?,
        )?;
        let r = req.into_inner();
        let c = self.cluster.stop(&r.name, r.timeout_seconds, &id.name);
        Ok(Response::new(c.await?))
    }

    async fn restart_container(
        &self,
        req: Request<pb::RestartContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_operate(
            &id,
            "RestartContainer",
            &self.cluster.get(&req.get_ref().name)?,
        )?;
        let r = req.into_inner();
        let c = self.cluster.restart(&r.name, r.timeout_seconds, &id.name);
        Ok(Response::new(c.await?))
    }

    async fn extend_lease(
        &self,
        req: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_operate(&id, "ExtendLease", &self.cluster.get(&req.get_ref().name)?)?;
        let r = req.into_inner();
        let c = self.cluster.extend_lease(&r.name, r.ttl_seconds, &id.name);
        Ok(Response::new(c.await?))
    }

    async fn delete_container(
        &self,
        req: Request<pb::DeleteContainerRequest>,
    ) -> Result<Response<pb::DeleteContainerResponse>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        may_operate(
            &id,
            "DeleteContainer",
            &self.cluster.get(&req.get_ref().name)?,
        )?;
        let r = req.into_inner();
        let container = self
            .cluster
            .delete(&r.name, r.force, r.purge, &id.name)
            .await?;
        let pending = container.spec().desired_state == pb::DesiredState::Removed as i32;
        let ws = container.spec().workspace.clone();
        let (workspace_kept, workspace_deleted) = match (ws.is_empty(), r.purge && !pending) {
            (true, _) => (String::new(), String::new()),
            (false, true) => (String::new(), ws),
            (false, false) => (ws, String::new()),
        };
        Ok(Response::new(pb::DeleteContainerResponse {
            pending,
            container: Some(container),
            workspace_kept,
            workspace_deleted,
        }))
    }
}
