//! The engine's images, as the agent reports them (`devctl images ls`).

use bollard::{Docker, query_parameters::ListImagesOptions};
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
