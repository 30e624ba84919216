//! Authentication: every call carries the caller's client certificate
//! (mutual TLS; the TLS layer has already checked it against the cluster
//! CA). The interceptor reads the identity from it and stores it in the
//! request's extensions for the handlers.

use devctl_proto::{
    identity::{Identity, Role},
    pb,
};
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

/// Which containers an identity may see: admins and viewers all of them,
/// a developer only their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every container.
    All,
    /// Only containers owned by this identity.
    Owner(String),
}

impl Scope {
    /// The scope of `id`.
    pub fn of(id: &Identity) -> Self {
        match id.role {
            Role::Developer => Scope::Owner(id.name.clone()),
            _ => Scope::All,
        }
    }

    /// Whether a container owned by `owner` is in scope.
    pub fn allows(&self, owner: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Owner(me) => me == owner,
        }
    }
}

/// Remembers which container ids are in a scope (a stream asks per item).
#[derive(Debug)]
pub struct ScopeFilter {
    scope: Scope,
    known: std::collections::HashMap<String, bool>,
}

impl ScopeFilter {
    /// A filter for `id`.
    pub fn new(id: &Identity) -> Self {
        Self {
            scope: Scope::of(id),
            known: Default::default(),
        }
    }

    /// Whether the container with id `container_id` is in scope; `owner`
    /// looks its owner up (once per id). Items of no container (node
    /// events and samples) always are.
    pub fn allows(&mut self, container_id: &str, owner: impl FnOnce() -> Option<String>) -> bool {
        if container_id.is_empty() || self.scope == Scope::All {
            return true;
        }
        if let Some(&yes) = self.known.get(container_id) {
            return yes;
        }
        let yes = owner().is_some_and(|o| self.scope.allows(&o));
        self.known.insert(container_id.to_string(), yes);
        yes
    }
}

fn not_yours(id: &Identity, method: &str, c: &pb::Container) -> Status {
    Status::permission_denied(format!(
        "{id} may not call {method} on container {:?}: it belongs to {}; developers act on their own containers (an admin can act for anyone)",
        c.name, c.owner
    ))
}

/// Refuses `id` reading container `c` (a developer reading another's).
pub fn may_see(id: &Identity, method: &str, c: &pb::Container) -> Result<(), Status> {
    if Scope::of(id).allows(&c.owner) {
        Ok(())
    } else {
        Err(not_yours(id, method, c))
    }
}

/// Refuses `id` changing container `c`: read-only roles, and developers
/// on another's container.
pub fn may_operate(id: &Identity, method: &str, c: &pb::Container) -> Result<(), Status> {
    may_write(id, method)?;
    may_see(id, method, c)
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
