//! `devctl.v1.ImageService`: which image is on which node.

use devctl_proto::pb::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status};

use super::auth::caller;
use crate::cluster::Cluster;

/// The image service over a cluster.
#[derive(Debug, Clone)]
pub struct ImageApi {
    cluster: Cluster,
}

impl ImageApi {
    /// The service for `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    /// Any caller: images are no secret to those who may create containers
    /// from them (as `devctl nodes`).
    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        caller(&req)?;
        Ok(Response::new(
            self.cluster.list_images(&req.get_ref().node)?,
        ))
    }
}
