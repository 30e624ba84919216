//! What the agent tells the scheduler about its engine's images: the list
//! (on request) and a digest of it on every heartbeat, so the scheduler
//! fetches the list only when it changed.

use std::hash::{DefaultHasher, Hash, Hasher};

use devctl_proto::pb;

/// A digest of `images` (ids and tags, in order): equal lists give equal
/// digests, in every agent process (std's SipHash with fixed keys).
pub fn digest(images: &[pb::Image]) -> String {
    let mut h = DefaultHasher::new();
    images.len().hash(&mut h);
    for i in images {
        i.id.hash(&mut h);
        i.tags.hash(&mut h);
    }
    format!("{:016x}", h.finish())
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
    fn the_digest_changes_with_ids_and_tags_only() {
        let a = [image("sha256:1", &["x:1"]), image("sha256:2", &[])];
        let mut sized = a.clone();
        sized[0].size_bytes = 9;
        assert_eq!(digest(&a), digest(&sized));
        let mut retagged = a.clone();
        retagged[1].tags.push("y:1".into());
        assert_ne!(digest(&a), digest(&retagged));
        assert_ne!(digest(&a), digest(&a[..1]));
        assert_ne!(digest(&[]), digest(&a));
    }
}
