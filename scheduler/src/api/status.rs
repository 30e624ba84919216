//! The cluster's errors as gRPC statuses: each [`ErrorKind`] maps to a code
//! and to machine-readable details in `grpc-status-details-bin`: always a
//! `google.rpc.ErrorInfo` (a stable reason, domain [`ERROR_DOMAIN`],
//! metadata), plus `RetryInfo` for rate limits, `QuotaFailure` for quotas,
//! `PreconditionFailure` for per-node or per-container reasons and
//! `BadRequest` for a malformed field. The message stays the one for
//! people. docs/errors.md lists the reasons.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::cluster::{Error, ErrorKind};

/// The `ErrorInfo.domain` of every devctl error.
pub const ERROR_DOMAIN: &str = "devctl.dev";

/// The `PreconditionFailure` violation type of a node's reason.
const NODE: &str = "NODE";
/// The `PreconditionFailure` violation type of a container's state.
const CONTAINER: &str = "CONTAINER";
/// The `PreconditionFailure` violation type of a workspace.
const WORKSPACE: &str = "WORKSPACE";

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        let (code, reason) = code_and_reason(e.kind());
        if code == Code::Internal {
            tracing::error!(error = %msg, "internal error");
        }
        let mut details = ErrorDetails::new();
        let mut meta = HashMap::new();
        let mut put = |k: &str, v: &str| meta.insert(k.to_string(), v.to_string());
        match e.kind() {
            ErrorKind::InvalidSpec { field } => {
                put("field", field);
                details.add_bad_request_violation(field, &msg);
            }
            ErrorKind::NotFound { what, name } => {
                put("resourceType", what);
                put("name", name);
            }
            ErrorKind::NameTaken { name } => {
                put("name", name);
            }
            ErrorKind::WrongState { name } => {
                put("container", name);
                details.add_precondition_failure_violation(CONTAINER, name, &msg);
            }
            ErrorKind::NodeNotReady { node } => {
                put("node", node);
                details.add_precondition_failure_violation(NODE, node, &msg);
            }
            ErrorKind::MissingOnNode { node, name } => {
                put("node", node);
                put("container", name);
            }
            ErrorKind::EngineRejected { node }
            | ErrorKind::ImageNotFound { node }
            | ErrorKind::EngineConflict { node }
            | ErrorKind::AgentUnreachable { node }
            | ErrorKind::AgentShuttingDown { node }
            | ErrorKind::NoSshServer { node }
            | ErrorKind::AgentTooOld { node }
            | ErrorKind::MountRefused { node } => {
                put("node", node);
            }
            ErrorKind::TunnelRefused { node, name } => {
                put("node", node);
                put("container", name);
                details.add_precondition_failure_violation(CONTAINER, name, &msg);
            }
            ErrorKind::NoSuitableNode { rejections } | ErrorKind::NoCapacity { rejections } => {
                for r in rejections {
                    details.add_precondition_failure_violation(NODE, &r.node, &r.reason);
                }
            }
            ErrorKind::QuotaExceeded(q) => {
                put("owner", &q.owner);
                put("subject", &q.subject);
                put("resource", &q.what.to_ascii_lowercase());
                put("limit", &q.limit);
                put("inUse", &q.held);
                put("asked", &q.asked);
                details.add_quota_failure_violation(
                    &q.subject,
                    format!(
                        "{} limit {}, {} in use, this container asks {}",
                        q.what, q.limit, q.held, q.asked
                    ),
                );
            }
            ErrorKind::RateLimited { retry_after } => {
                put("retryAfterMs", &retry_after.as_millis().to_string());
                details.set_retry_info(Some(*retry_after));
            }
            ErrorKind::RegistryAuthFailed { node, host }
            | ErrorKind::RegistryUnreachable { node, host } => {
                put("node", node);
                put("registry", host);
            }
            ErrorKind::NoNodes | ErrorKind::HistoryUnavailable | ErrorKind::Internal => {}
            ErrorKind::WorkspaceInUse {
                workspace,
                container,
            } => {
                put("workspace", workspace);
                put("container", container);
                details.add_precondition_failure_violation(WORKSPACE, workspace, &msg);
            }
            ErrorKind::WorkspaceNodeUnavailable { workspace, node }
            | ErrorKind::WorkspaceMissing { workspace, node } => {
                put("workspace", workspace);
                put("node", node);
                details.add_precondition_failure_violation(WORKSPACE, workspace, &msg);
            }
            ErrorKind::WorkspaceNotYours { workspace } => {
                put("workspace", workspace);
            }
        }
        details.set_error_info(reason, ERROR_DOMAIN, meta);
        Status::with_error_details(code, msg, details)
    }
}

/// A refusal made outside the cluster's operations (by an API handler),
/// with an `ErrorInfo` of `reason` and `metadata`, as every refusal has.
pub(crate) fn refusal(
    code: Code,
    msg: String,
    reason: &str,
    metadata: &[(&str, String)],
) -> Status {
    let mut details = ErrorDetails::new();
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect::<HashMap<_, _>>();
    details.set_error_info(reason, ERROR_DOMAIN, meta);
    Status::with_error_details(code, msg, details)
}

/// The gRPC code and the `ErrorInfo.reason` of `kind`.
fn code_and_reason(kind: &ErrorKind) -> (Code, &'static str) {
    match kind {
        ErrorKind::InvalidSpec { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
        ErrorKind::EngineRejected { .. } => (Code::InvalidArgument, "ENGINE_REJECTED"),
        ErrorKind::NotFound { .. } => (Code::NotFound, "NOT_FOUND"),
        ErrorKind::NameTaken { .. } => (Code::AlreadyExists, "NAME_TAKEN"),
        ErrorKind::WrongState { .. } => (Code::FailedPrecondition, "WRONG_STATE"),
        ErrorKind::NodeNotReady { .. } => (Code::FailedPrecondition, "NODE_NOT_READY"),
        ErrorKind::MissingOnNode { .. } => (Code::FailedPrecondition, "MISSING_ON_NODE"),
        ErrorKind::ImageNotFound { .. } => (Code::FailedPrecondition, "IMAGE_NOT_FOUND"),
        ErrorKind::EngineConflict { .. } => (Code::FailedPrecondition, "ENGINE_CONFLICT"),
        ErrorKind::NoNodes => (Code::FailedPrecondition, "NO_NODES"),
        ErrorKind::NoSuitableNode { .. } => (Code::FailedPrecondition, "NO_SUITABLE_NODE"),
        ErrorKind::NoCapacity { .. } => (Code::ResourceExhausted, "NO_CAPACITY"),
        ErrorKind::QuotaExceeded(_) => (Code::ResourceExhausted, "QUOTA_EXCEEDED"),
        ErrorKind::RateLimited { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
        ErrorKind::AgentUnreachable { .. } => (Code::Unavailable, "AGENT_UNREACHABLE"),
        ErrorKind::AgentShuttingDown { .. } => (Code::Unavailable, "AGENT_SHUTTING_DOWN"),
        ErrorKind::NoSshServer { .. } => (Code::Unavailable, "NO_SSH_SERVER"),
        ErrorKind::AgentTooOld { .. } => (Code::Unavailable, "AGENT_TOO_OLD"),
        ErrorKind::TunnelRefused { .. } => (Code::FailedPrecondition, "TUNNEL_REFUSED"),
        ErrorKind::RegistryAuthFailed { .. } => (Code::FailedPrecondition, "REGISTRY_AUTH_FAILED"),
        ErrorKind::RegistryUnreachable { .. } => (Code::Unavailable, "REGISTRY_UNREACHABLE"),
        ErrorKind::HistoryUnavailable => (Code::Unavailable, "HISTORY_UNAVAILABLE"),
        ErrorKind::Internal => (Code::Internal, "INTERNAL"),
        ErrorKind::WorkspaceInUse { .. } => (Code::FailedPrecondition, "WORKSPACE_IN_USE"),
        ErrorKind::WorkspaceNodeUnavailable { .. } => {
            (Code::FailedPrecondition, "WORKSPACE_NODE_UNAVAILABLE")
        }
        ErrorKind::WorkspaceMissing { .. } => (Code::FailedPrecondition, "WORKSPACE_MISSING"),
        ErrorKind::MountRefused { .. } => (Code::FailedPrecondition, "MOUNT_REFUSED"),
        ErrorKind::WorkspaceNotYours { .. } => (Code::PermissionDenied, "WORKSPACE_NOT_YOURS"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use devctl_proto::{identity::Role, validate::InvalidField};
    use tonic_types::ErrorDetails;

    use super::*;
    use crate::{
        placement::{PlacementError, Rejection},
        quota::{Held, Quotas},
    };

    /// `e` as a status: its code, message and details.
    fn status(e: Error) -> (Code, String, ErrorDetails) {
        let s = Status::from(e);
        (s.code(), s.message().to_string(), s.get_error_details())
    }

    fn reason(d: &ErrorDetails) -> (&str, &str) {
        let info = d.error_info().expect("ErrorInfo");
        (info.reason.as_str(), info.domain.as_str())
    }

    fn rejection(node: &str, reason: &str, capacity: bool) -> Rejection {
        Rejection {
            node: node.into(),
            reason: reason.into(),
            capacity,
        }
    }

    #[test]
    fn a_quota_refusal_carries_quota_failure() {
        let mut q = Quotas::default();
        q.roles
            .insert(Role::Developer, "containers=1".parse().unwrap());
        let held = Held {
            containers: 1,
            ..Held::default()
        };
        let exceeded = q.check("bob", Role::Developer, held, 0, 0).unwrap_err();
        let text = exceeded.to_string();
        let (code, msg, d) = status(exceeded.into());
        assert_eq!(code, Code::ResourceExhausted);
        assert_eq!(msg, text);
        assert_eq!(reason(&d), ("QUOTA_EXCEEDED", ERROR_DOMAIN));
        let meta = &d.error_info().unwrap().metadata;
        assert_eq!(meta["owner"], "bob");
        assert_eq!(meta["resource"], "containers");
        assert_eq!(meta["limit"], "1");
        let v = &d.quota_failure().expect("QuotaFailure").violations;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].subject, "role:developer");
        assert_eq!(
            v[0].description,
            "containers limit 1, 1 in use, this container asks 1 more"
        );
        assert!(d.retry_info().is_none() && d.precondition_failure().is_none());
    }

    #[test]
    fn no_capacity_names_each_node_and_its_reason() {
        let e = PlacementError::NoFit(vec![
            rejection("a", "needs 2 CPUs, 1 free of 4", true),
            rejection("b", "cordoned", false),
        ]);
        let text = e.to_string();
        let (code, msg, d) = status(e.into());
        assert_eq!(code, Code::ResourceExhausted);
        assert_eq!(msg, text);
        assert_eq!(reason(&d).0, "NO_CAPACITY");
        let v = &d
            .precondition_failure()
            .expect("PreconditionFailure")
            .violations;
        let got: Vec<_> = v
            .iter()
            .map(|v| {
                (
                    v.r#type.as_str(),
                    v.subject.as_str(),
                    v.description.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("NODE", "a", "needs 2 CPUs, 1 free of 4"),
                ("NODE", "b", "cordoned")
            ]
        );
        assert!(d.quota_failure().is_none() && d.retry_info().is_none());
    }

    #[test]
    fn unsuitable_nodes_are_a_failed_precondition_and_placement_kinds_follow() {
        let e = PlacementError::NoFit(vec![rejection("b", "cordoned", false)]);
        let (code, _, d) = status(e.into());
        assert_eq!(code, Code::FailedPrecondition);
        assert_eq!(reason(&d).0, "NO_SUITABLE_NODE");
        assert_eq!(d.precondition_failure().unwrap().violations.len(), 1);

        let (code, _, d) = status(PlacementError::UnknownNode("x".into()).into());
        assert_eq!(code, Code::NotFound);
        assert_eq!(reason(&d).0, "NOT_FOUND");
        assert_eq!(d.error_info().unwrap().metadata["resourceType"], "node");

        let (code, _, d) = status(PlacementError::NoNodes.into());
        assert_eq!((code, reason(&d).0), (Code::FailedPrecondition, "NO_NODES"));
    }

    #[test]
    fn a_rate_limit_carries_retry_info() {
        let wait = Duration::from_millis(1500);
        let e = Error::new(ErrorKind::RateLimited { retry_after: wait }, "slow down");
        let (code, msg, d) = status(e);
        assert_eq!((code, msg.as_str()), (Code::ResourceExhausted, "slow down"));
        assert_eq!(reason(&d).0, "RATE_LIMITED");
        assert_eq!(d.retry_info().unwrap().retry_delay, Some(wait));
        assert_eq!(d.error_info().unwrap().metadata["retryAfterMs"], "1500");
    }

    #[test]
    fn an_invalid_field_carries_bad_request_and_keeps_its_text() {
        let e: Error = InvalidField::new("container.name", "is required").into();
        let (code, msg, d) = status(e);
        assert_eq!(code, Code::InvalidArgument);
        assert_eq!(msg, "container.name: is required");
        assert_eq!(reason(&d).0, "INVALID_ARGUMENT");
        let v = &d.bad_request().unwrap().field_violations;
        assert_eq!(v[0].field, "container.name");
    }

    #[test]
    fn each_kind_has_its_code() {
        let node = || "n".to_string();
        let cases = [
            (
                ErrorKind::EngineRejected { node: node() },
                Code::InvalidArgument,
                "ENGINE_REJECTED",
            ),
            (
                ErrorKind::NameTaken { name: node() },
                Code::AlreadyExists,
                "NAME_TAKEN",
            ),
            (
                ErrorKind::WrongState { name: node() },
                Code::FailedPrecondition,
                "WRONG_STATE",
            ),
            (
                ErrorKind::NodeNotReady { node: node() },
                Code::FailedPrecondition,
                "NODE_NOT_READY",
            ),
            (
                ErrorKind::MissingOnNode {
                    node: node(),
                    name: node(),
                },
                Code::FailedPrecondition,
                "MISSING_ON_NODE",
            ),
            (
                ErrorKind::ImageNotFound { node: node() },
                Code::FailedPrecondition,
                "IMAGE_NOT_FOUND",
            ),
            (
                ErrorKind::EngineConflict { node: node() },
                Code::FailedPrecondition,
                "ENGINE_CONFLICT",
            ),
            (
                ErrorKind::AgentUnreachable { node: node() },
                Code::Unavailable,
                "AGENT_UNREACHABLE",
            ),
            (
                ErrorKind::AgentShuttingDown { node: node() },
                Code::Unavailable,
                "AGENT_SHUTTING_DOWN",
            ),
            (
                ErrorKind::NoSshServer { node: node() },
                Code::Unavailable,
                "NO_SSH_SERVER",
            ),
            (
                ErrorKind::AgentTooOld { node: node() },
                Code::Unavailable,
                "AGENT_TOO_OLD",
            ),
            (
                ErrorKind::TunnelRefused {
                    node: node(),
                    name: node(),
                },
                Code::FailedPrecondition,
                "TUNNEL_REFUSED",
            ),
            (
                ErrorKind::RegistryAuthFailed {
                    node: node(),
                    host: node(),
                },
                Code::FailedPrecondition,
                "REGISTRY_AUTH_FAILED",
            ),
            (
                ErrorKind::RegistryUnreachable {
                    node: node(),
                    host: node(),
                },
                Code::Unavailable,
                "REGISTRY_UNREACHABLE",
            ),
            (
                ErrorKind::HistoryUnavailable,
                Code::Unavailable,
                "HISTORY_UNAVAILABLE",
            ),
            (ErrorKind::Internal, Code::Internal, "INTERNAL"),
        ];
        for (kind, want, want_reason) in cases {
            let (code, msg, d) = status(Error::new(kind.clone(), "text"));
            assert_eq!((code, msg.as_str()), (want, "text"), "{kind:?}");
            assert_eq!(reason(&d), (want_reason, ERROR_DOMAIN), "{kind:?}");
        }
    }

    #[test]
    fn bus_and_store_errors_keep_their_text_and_source() {
        let bus = crate::bus::BusError::NoResponders("n".into());
        let text = bus.to_string();
        let e = Error::from(bus);
        assert_eq!(e.kind(), &ErrorKind::AgentUnreachable { node: "n".into() });
        assert_eq!(e.to_string(), text);
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::from(crate::store::StoreError::NameTaken("web".into()));
        assert_eq!(e.kind(), &ErrorKind::NameTaken { name: "web".into() });
        assert_eq!(
            e.to_string(),
            "a container named \"web\" already exists; choose another name or remove it first (devctl rm web)"
        );
    }
}
