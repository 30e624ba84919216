//! The engine's images, as the agent reports them (`devctl images ls`).

use bollard::{
    Docker,
    errors::Error as BollardError,
    query_parameters::{ListImagesOptions, RemoveImageOptions},
};
use devctl_proto::pb;

use super::{RuntimeError, engine};

/// Every image on the engine (not intermediate layers), ordered by id.
pub(super) async fn list(docker: &Docker) -> Result<Vec<pb::Image>, RuntimeError> {
    let summaries = docker
        .list_images(Some(ListImagesOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(engine)?;
    let mut out: Vec<pb::Image> = summaries
        .into_iter()
        .map(|s| {
            let mut tags: Vec<String> = s
                .repo_tags
                .into_iter()
                // The engine's word for "untagged".
                .filter(|t| t != "<none>:<none>")
                .collect();
            tags.sort();
            pb::Image {
                id: s.id,
                tags,
                size_bytes: s.size,
                created: Some(prost_types::Timestamp {
                    seconds: s.created,
                    nanos: 0,
                }),
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Removes `image` as `docker rmi` does (not forced, pruning its untagged
/// parents): refused with [`RuntimeError::Conflict`] while a container uses
/// it; [`RuntimeError::ImageNotFound`] when the engine has no such image.
pub(super) async fn remove(
    docker: &Docker,
    node: &str,
    image: &str,
) -> Result<pb::ImageRemoval, RuntimeError> {
    let items = docker
        .remove_image(
            image,
            Some(RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            }),
            None,
        )
        .await
        .map_err(|e| match e {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => RuntimeError::ImageNotFound {
                image: image.to_string(),
                node: node.to_string(),
            },
            BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            } => RuntimeError::Conflict(message),
            other => engine(other),
        })?;
    let mut out = pb::ImageRemoval {
        node: node.to_string(),
        ..Default::default()
    };
    for i in items {
        out.untagged.extend(i.untagged);
        out.deleted.extend(i.deleted);
    }
    Ok(out)
}
