//! `devctl.v1.NodeService`.

use devctl_proto::pb::{self, node_service_server::NodeService};
use tonic::{Request, Response, Status};

use super::auth::caller;
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
}
