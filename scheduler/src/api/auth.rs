//! Authentication: every call carries the caller's client certificate
//! (mutual TLS; the TLS layer has already checked it against the cluster
//! CA). The interceptor reads the identity from it and stores it in the
//! request's extensions for the handlers.

use devctl_proto::identity::{Identity, Role};
use tonic::{Request, Status};

/// Reads the caller's identity from its certificate. Agents may not use the
/// API.
pub fn authenticate(mut req: Request<()>) -> Result<Request<()>, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by the cluster CA is required")
    })?;
    let cert = certs.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by the cluster CA is required")
    })?;
    let identity =
        Identity::from_der(cert.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
    if identity.role == Role::Agent {
        return Err(Status::permission_denied(
            "agent certificates may use the bus only, not the API; use an admin or developer certificate",
        ));
    }
    req.extensions_mut().insert(identity);
    Ok(req)
}

/// The identity [`authenticate`] stored.
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated identity"))
}

/// Refuses every identity but an admin (cluster-wide changes such as
/// cordoning a node).
pub fn must_be_admin(id: &Identity, method: &str) -> Result<(), Status> {
    match id.role {
        Role::Admin => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "{id} may not call {method}: it changes the cluster and needs the admin role"
        ))),
    }
}

/// Refuses read-only identities a mutating call.
pub fn may_write(id: &Identity, method: &str) -> Result<(), Status> {
    match id.role {
        Role::Admin | Role::Developer => Ok(()),
        Role::Viewer | Role::Agent => Err(Status::permission_denied(format!(
            "{id} may not call {method}: the {} role is read-only",
            id.role
        ))),
    }
}
