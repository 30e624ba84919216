//! `devctl.v1.ImageService`: which image is on which node, and pushes of
//! images to nodes without a registry (in `push`).

use std::sync::Arc;

use devctl_proto::pb::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status, Streaming};

use super::{
    StreamApi, audit,
    auth::{caller, must_be_admin},
    push::{PushStream, Pushes},
};
use crate::cluster::Cluster;

/// The image service over a cluster.
#[derive(Debug, Clone)]
pub struct ImageApi {
    cluster: Cluster,
    push: Option<Arc<(StreamApi, Pushes)>>,
}

impl ImageApi {
    /// The service for `cluster` (pushes refused).
    pub fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            push: None,
        }
    }

    /// Takes pushes too: their streams run as `streaming`'s, their
    /// archives are kept by `pushes`.
    pub fn with_push(mut self, streaming: StreamApi, pushes: Pushes) -> Self {
        self.push = Some(Arc::new((streaming, pushes)));
        self
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    type PushImageStream = PushStream;

    /// Developers and admins (as a build): the image goes to the nodes,
    /// not to anyone's container.
    async fn push_image(
        &self,
        req: Request<Streaming<pb::PushImageInput>>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        let Some(push) = &self.push else {
            return Err(Status::failed_precondition(
                "image pushes are off on this scheduler: it runs with --image-store-size 0, or its image archive store could not be made (see its log); use a registry or devctl images build meanwhile",
            ));
        };
        let (streaming, pushes) = push.as_ref();
        Ok(Response::new(streaming.push_image(pushes, req).await?))
    }

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
