//! Which image is on which node: the [`ImageCatalog`], filled from what
//! the agents report, read by `devctl images ls` and by placement.
//!
//! Kept in memory, not in the store: each engine is the truth about its
//! own images, every heartbeat carries a digest of its list, and a
//! scheduler that starts with an empty catalog fetches each node's list at
//! its first heartbeat. A stored copy would only ever be older.

use std::collections::BTreeMap;

use devctl_proto::{
    container::ContainerExt,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
};

use super::{Cluster, Error, ErrorKind, error::agent_error};

/// The images of every node that reported them (std lock: map operations
/// only, never held across an await).
#[derive(Debug, Default)]
pub(crate) struct ImageCatalog {
    nodes: std::sync::Mutex<BTreeMap<String, NodeImages>>,
}

#[derive(Debug, Default)]
struct NodeImages {
    /// The digest of `images` (empty: never fetched).
    digest: String,
    images: Vec<pb::Image>,
    /// A fetch is in flight.
    fetching: bool,
}

impl ImageCatalog {
    /// Whether `node`'s list must be fetched for a heartbeat carrying
    /// `digest`; if so the fetch is marked in flight (one at a time).
    fn start_fetch(&self, node: &str, digest: &str) -> bool {
        if digest.is_empty() {
            return false;
        }
        let mut nodes = self.nodes.lock().expect("catalog lock");
        let entry = nodes.entry(node.to_string()).or_default();
        if entry.fetching || entry.digest == digest {
            return false;
        }
        entry.fetching = true;
        true
    }

    /// Records a fetch's outcome (`None`: it failed; the next heartbeat
    /// retries).
    pub(super) fn fetched(&self, node: &str, list: Option<pb::ImageList>) {
        let mut nodes = self.nodes.lock().expect("catalog lock");
        let entry = nodes.entry(node.to_string()).or_default();
        entry.fetching = false;
        if let Some(list) = list {
            entry.digest = list.digest;
            entry.images = list.images;
        }
    }

    /// `node`'s images, if it reported them.
    pub(crate) fn images_of(&self, node: &str) -> Option<Vec<pb::Image>> {
        let nodes = self.nodes.lock().expect("catalog lock");
        nodes
            .get(node)
            .filter(|n| !n.digest.is_empty() || !n.images.is_empty())
            .map(|n| n.images.clone())
    }

    /// Whether `node` holds `reference`; `None` when its images are not
    /// known yet.
    pub(crate) fn has(&self, node: &str, reference: &str) -> Option<bool> {
        let nodes = self.nodes.lock().expect("catalog lock");
        let n = nodes
            .get(node)
            .filter(|n| !n.digest.is_empty() || !n.images.is_empty())?;
        Some(n.images.iter().any(|i| matches(i, reference)))
    }
}

/// `reference` as the engine lists tags: without the default registry's
/// `docker.io/` and `library/` prefixes, with `:latest` when untagged.
pub(crate) fn normalize(reference: &str) -> String {
    let r = reference
        .strip_prefix("docker.io/")
        .or_else(|| reference.strip_prefix("index.docker.io/"))
        .unwrap_or(reference);
    let r = r.strip_prefix("library/").unwrap_or(r);
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || last.contains('@') {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

/// Whether `image` is what `reference` names: one of its tags, its id
/// (`sha256:…`), or an id prefix of at least 12 hex digits (as `docker`
/// shows ids).
pub(crate) fn matches(image: &pb::Image, reference: &str) -> bool {
    let hex = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
    let r = reference.strip_prefix("sha256:").unwrap_or(reference);
    if r.len() >= 12 && r.chars().all(|c| c.is_ascii_hexdigit()) && hex.starts_with(r) {
        return true;
    }
    let wanted = normalize(reference);
    image.tags.iter().any(|t| normalize(t) == wanted)
}

impl Cluster {
    /// Starts a fetch of `hb.node`'s image list when its digest changed.
    pub(super) fn observe_images(&self, hb: &pb::Heartbeat) {
        if hb.leaving || !self.shared.images.start_fetch(&hb.node, &hb.images_digest) {
            return;
        }
        let (this, node) = (self.clone(), hb.node.clone());
        self.shared.tasks.spawn(async move {
            let reply = this
                .send(&node, Command::ListImages(pb::ListImagesCommand {}), 0)
                .await;
            let list = match reply {
                Ok(Reply::Images(list)) => Some(list),
                Ok(other) => {
                    tracing::warn!(node, reply = ?other, "unexpected reply to ListImages");
                    None
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "listing images failed; retrying at the next heartbeat");
                    None
                }
            };
            this.shared.images.fetched(&node, list);
        });
    }

    /// Every node's images (or `node`'s), ordered by node, then first tag
    /// (untagged last), then id; and the nodes whose images are not known.
    pub fn list_images(&self, node: &str) -> Result<pb::ListImagesResponse, Error> {
        let names: Vec<String> = if node.is_empty() {
            self.shared
                .nodes
                .snapshot()
                .into_iter()
                .map(|n| n.name)
                .collect()
        } else {
            vec![self.node(node)?.name]
        };
        let mut out = pb::ListImagesResponse::default();
        for name in names {
            let ready = self.shared.nodes.is_ready(&name);
            match self.shared.images.images_of(&name).filter(|_| ready) {
                Some(mut images) => {
                    images.sort_by(|a, b| {
                        let key = |i: &pb::Image| (i.tags.is_empty(), i.tags.first().cloned());
                        key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
                    });
                    out.images
                        .extend(images.into_iter().map(|image| pb::NodeImage {
                            node: name.clone(),
                            image: Some(image),
                        }));
                }
                None => out.unknown_nodes.push(name),
            }
        }
        Ok(out)
    }

    /// Removes `image` from `node` (empty: from every node holding it), as
    /// `docker rmi` on each. Stops at the first node that refuses (a
    /// container uses the image there): what was removed before stays
    /// removed, as with `docker rmi` on several hosts.
    pub async fn remove_image(
        &self,
        image: &str,
        node: &str,
    ) -> Result<pb::RemoveImageResponse, Error> {
        if image.trim().is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidSpec {
                    field: "image".into(),
                },
                "image: give the image to remove (a tag like devctl/busybox:latest, or an id)",
            ));
        }
        let targets: Vec<String> = if node.is_empty() {
            self.shared
                .nodes
                .snapshot()
                .into_iter()
                .map(|n| n.name)
                .filter(|n| self.node_has_image(n, image) == Some(true))
                .collect()
        } else {
            let n = self.node(node)?.name;
            if self.node_has_image(&n, image) == Some(false) {
                return Err(image_not_on(image, Some(&n)));
            }
            vec![n]
        };
        if targets.is_empty() {
            return Err(image_not_on(image, None));
        }
        let mut out = pb::RemoveImageResponse::default();
        for n in targets {
            let reply = self
                .send(
                    &n,
                    Command::RemoveImage(pb::RemoveImageCommand {
                        image: image.to_string(),
                    }),
                    0,
                )
                .await?;
            match reply {
                Reply::ImageRemoved(r) => {
                    tracing::info!(node = %n, image, "image removed");
                    out.removals.push(r);
                }
                other => {
                    let mut on = pb::Container::default();
                    on.status_mut().node = n.clone();
                    let e = agent_error(other, &on);
                    let message = match e.kind() {
                        ErrorKind::EngineConflict { .. } => format!(
                            "image {image:?} is in use on node {n}: {e} (remove the containers using it first, as with docker rmi)"
                        ),
                        _ => e.to_string(),
                    };
                    return Err(Error::new(e.kind().clone(), message));
                }
            }
        }
        Ok(out)
    }

    /// Whether `node` holds `image` (None: not known).
    pub(crate) fn node_has_image(&self, node: &str, image: &str) -> Option<bool> {
        self.shared.images.has(node, image)
    }
}

/// No such image on `node` (or on any node).
fn image_not_on(image: &str, node: Option<&str>) -> Error {
    let message = match node {
        Some(n) => format!("image {image:?} is not on node {n} (see devctl images ls --node {n})"),
        None => format!("no node holds image {image:?} (see devctl images ls)"),
    };
    Error::new(
        ErrorKind::NotFound {
            what: "image",
            name: image.to_string(),
        },
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tags: &[&str]) -> pb::Image {
        pb::Image {
            id: id.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn references_match_tags_ids_and_id_prefixes_as_docker_does() {
        let busybox = image(
            "sha256:62129d9a5ce5aa1122334455667788990011223344556677889900aabbccdd",
            &["devctl/busybox:latest", "busybox:1.36"],
        );
        for yes in [
            "devctl/busybox:latest",
            "devctl/busybox",
            "docker.io/library/busybox:1.36",
            "library/busybox:1.36",
            "62129d9a5ce5",
            "sha256:62129d9a5ce5aa11",
        ] {
            assert!(matches(&busybox, yes), "{yes}");
        }
        for no in [
            "busybox",
            "devctl/busybox:1",
            "62129d9a",
            "other:latest",
            "busybox:1.3",
        ] {
            assert!(!matches(&busybox, no), "{no}");
        }
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalize("localhost:5000/x:2"), "localhost:5000/x:2");
    }

    #[test]
    fn a_list_is_fetched_once_per_digest_and_unknown_until_then() {
        let c = ImageCatalog::default();
        assert_eq!(c.has("a", "x:1"), None);
        assert!(!c.start_fetch("a", ""), "an agent without image reports");
        assert!(c.start_fetch("a", "d1"));
        assert!(!c.start_fetch("a", "d1"), "one fetch at a time");
        c.fetched("a", None);
        assert_eq!(c.has("a", "x:1"), None, "a failed fetch teaches nothing");
        assert!(c.start_fetch("a", "d1"), "retried");
        c.fetched(
            "a",
            Some(pb::ImageList {
                images: vec![image("sha256:1", &["x:1"])],
                digest: "d1".into(),
            }),
        );
        assert_eq!(c.has("a", "x:1"), Some(true));
        assert_eq!(c.has("a", "y:1"), Some(false));
        assert!(!c.start_fetch("a", "d1"), "unchanged");
        assert!(c.start_fetch("a", "d2"), "changed");
    }
}
