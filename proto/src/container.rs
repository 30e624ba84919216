//! A container's spec and status, read and written without unwrapping.
//!
//! prost makes every message field an `Option`; a `Container` the scheduler
//! records always has both parts, and one a client sends may lack either.
//! [`ContainerExt`] reads a missing part as its defaults and creates it on
//! the first write, so code says `c.status().state()` and
//! `c.status_mut().last_error = …` instead of unwrapping at every use.

use std::sync::LazyLock;

use crate::pb;

static NO_SPEC: LazyLock<pb::ContainerSpec> = LazyLock::new(Default::default);
static NO_STATUS: LazyLock<pb::ContainerStatus> = LazyLock::new(Default::default);

/// Accessors for [`pb::Container`]'s `spec` and `status`.
pub trait ContainerExt {
    /// What the user asked for (defaults when the message has none).
    fn spec(&self) -> &pb::ContainerSpec;
    /// What the system observes (defaults when the message has none).
    fn status(&self) -> &pb::ContainerStatus;
    /// The spec, created empty when missing.
    fn spec_mut(&mut self) -> &mut pb::ContainerSpec;
    /// The status, created empty when missing.
    fn status_mut(&mut self) -> &mut pb::ContainerStatus;
}

impl ContainerExt for pb::Container {
    fn spec(&self) -> &pb::ContainerSpec {
        self.spec.as_ref().unwrap_or(&NO_SPEC)
    }

    fn status(&self) -> &pb::ContainerStatus {
        self.status.as_ref().unwrap_or(&NO_STATUS)
    }

    fn spec_mut(&mut self) -> &mut pb::ContainerSpec {
        self.spec.get_or_insert_default()
    }

    fn status_mut(&mut self) -> &mut pb::ContainerStatus {
        self.status.get_or_insert_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parts_read_as_defaults_and_appear_on_write() {
        let mut c = pb::Container::default();
        assert_eq!(c.spec().image, "");
        assert_eq!(c.status().state(), pb::ContainerState::Unspecified);
        assert!(c.spec.is_none() && c.status.is_none());
        c.status_mut().set_state(pb::ContainerState::Running);
        c.spec_mut().image = "busybox".into();
        assert_eq!(c.status().state(), pb::ContainerState::Running);
        assert_eq!(c.spec.as_ref().map(|s| s.image.as_str()), Some("busybox"));
    }
}
