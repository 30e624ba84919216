//! `devctl.v1.NodeService`.

use devctl_proto::pb::{self, node_service_server::NodeService};
use tonic::{Request, Response, Status};

use super::{
    audit,
    auth::{caller, must_be_admin},
};
use crate::cluster::Cluster;

/// The node service over a cluster.
#[derive(Debug, Clone)]
pub struct NodeApi {
    cluster: Cluster,
}

impl NodeApi {
    /// The service for `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        caller(&req)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: self.cluster.nodes()?,
        }))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        caller(&req)?;
        Ok(Response::new(self.cluster.node(&req.get_ref().name)?))
    }

    async fn cordon_node(
        &self,
        req: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        must_be_admin(&id, "CordonNode", "cordoning a node")?;
        let node = self
            .cluster
            .set_cordoned(&req.get_ref().name, true, &id.name);
        Ok(Response::new(node.await?))
    }

    async fn uncordon_node(
        &self,
        req: Request<pb::UncordonNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        must_be_admin(&id, "UncordonNode", "uncordoning a node")?;
        let node = self
            .cluster
            .set_cordoned(&req.get_ref().name, false, &id.name);
        Ok(Response::new(node.await?))
    }

    async fn drain_node(
        &self,
        req: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        must_be_admin(&id, "DrainNode", "draining a node")?;
        let r = req.into_inner();
        let drained = self.cluster.drain(&r.name, r.timeout_seconds, &id.name);
        Ok(Response::new(drained.await?))
    }
}
