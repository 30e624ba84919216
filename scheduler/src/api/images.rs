//! `devctl.v1.ImageService`: which image is on which node.

use devctl_proto::pb::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status};

use super::{
    audit,
    auth::{caller, must_be_admin},
};
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

    /// Admin only: an image removed from a node is gone for every user of
    /// that node.
    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().image);
        must_be_admin(&id, "RemoveImage", "removing an image")?;
        let r = req.into_inner();
        Ok(Response::new(
            self.cluster.remove_image(&r.image, &r.node).await?,
        ))
    }
}
