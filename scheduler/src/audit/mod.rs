//! The audit log's recording side: a tower layer around the whole router
//! that records every call that changes something or is refused.
//! `devctl.v1.AuditService` (`api::audit`) reads the log back.
//!
//! - `slot`: what is known about one call (identity, target), filled in by
//!   authentication ([`admit`], [`admit_anonymous`]) and the handlers
//!   ([`target`]), and the rate limits taken on the way;
//! - `layer`: the tower `Layer`/`Service` and the response body that
//!   records the call when its outcome is known;
//! - `writer`: the bounded queue and the task storing entries on the bus.
//!
//! ```text
//! request ─► AuditLayer (around every service) ── inserts a Call slot ──┐
//!              │ method = URI path, source = TCP peer address            │
//!              ▼                                                         ▼
//!          authenticate ── audit::admit: identity into the slot, rate limit
//!              ▼
//!          handler ── audit::target(&req, name): the container or node
//!              ▼
//!          response: grpc-status in the headers (trailers-only) or in the
//!          trailers (the body is wrapped; a stream: when it ends; dropped
//!          before its end: CANCELLED)
//!              ▼ recorded if the method mutates (AUDITED_METHODS) or the
//!              │ call was refused (PERMISSION_DENIED, UNAUTHENTICATED,
//!              │ the rate limiter)
//!          bounded channel ─► writer task (owned by `serve`) ─► JetStream
//!                                                  DEVCTL_AUDIT (--audit-retention)
//! ```
//!
//! The caller's response never waits for the publish. When the channel is
//! full the call waits up to [`FULL_WAIT`] for room, then the entry is
//! dropped, counted and logged.

use std::time::Duration;

mod layer;
mod slot;
mod writer;

pub(crate) use layer::AuditLayer;
pub(crate) use slot::{Call, admit, admit_anonymous, call, target};
pub(crate) use writer::AuditWriter;

/// The methods recorded whatever their outcome: every call that changes
/// something. New services add theirs here. Any other method is recorded
/// only when the call is refused.
const AUDITED_METHODS: &[&str] = &[
    "/devctl.v1.ContainerService/CreateContainer",
    "/devctl.v1.ContainerService/StartContainer",
    "/devctl.v1.ContainerService/StopContainer",
    "/devctl.v1.ContainerService/RestartContainer",
    "/devctl.v1.ContainerService/DeleteContainer",
    "/devctl.v1.ContainerService/ExtendLease",
    "/devctl.v1.NodeService/CordonNode",
    "/devctl.v1.NodeService/UncordonNode",
    "/devctl.v1.NodeService/DrainNode",
    "/devctl.v1.ExecService/Exec",
    "/devctl.v1.TunnelService/OpenTunnel",
    "/devctl.v1.SshService/SignUserKey",
    "/devctl.v1.TokenService/CreateToken",
    "/devctl.v1.TokenService/RevokeToken",
    "/devctl.v1.EnrollService/Join",
    "/devctl.v1.EnrollService/RenewCertificate",
    "/devctl.v1.BuildService/Build",
    "/devctl.v1.TemplateService/ApplyTemplate",
    "/devctl.v1.TemplateService/DeleteTemplate",
    "/devctl.v1.WorkspaceService/DeleteWorkspace",
    "/devctl.v1.WorkspaceService/MoveWorkspace",
    "/devctl.v1.RegistryService/AddRegistry",
    "/devctl.v1.RegistryService/RemoveRegistry",
    "/devctl.v1.ImageService/RemoveImage",
    "/devctl.v1.ImageService/PushImage",
    "/devctl.v1.GraphService/ResyncGraph",
];

/// The identity recorded for a call that carried no usable one.
const UNAUTHENTICATED: &str = "unauthenticated";

/// How long a call waits for room in a full queue before its entry is
/// dropped.
const FULL_WAIT: Duration = Duration::from_millis(100);

/// At most `max` bytes of `s` (cut at a character boundary).
fn capped(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod fixtures {
    use devctl_proto::identity::{Identity, Role};

    pub(super) fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            role: Role::Developer,
            serial: "01".into(),
            issued_at: 0,
            expires_at: 0,
            own_only: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_cuts_at_a_character_boundary() {
        assert_eq!(capped("héllo", 2), "h");
        assert_eq!(capped("abc", 10), "abc");
    }
}
