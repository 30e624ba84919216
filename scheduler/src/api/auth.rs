//! Authentication: every call carries a client certificate issued by the
//! cluster CA (mutual TLS; the TLS layer has already checked its chain) or
//! an API token (`authorization: Bearer dvt_...`). The interceptor
//! ([`Authenticator::authenticate`]) reads the identity from either, refuses
//! revoked certificates and tokens, and stores the identity in the
//! request's extensions for the handlers.
//!
//! Streams register with [`Sessions`], so revoking an identity also ends
//! the streams it has open.

use devctl_proto::container::ContainerExt;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use devctl_proto::{
    identity::{Identity, Role},
    pb,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

use super::status::refusal;
use crate::{revocation::Revocations, tokens::ApiTokens};

const NEED_CREDENTIALS: &str = "a client certificate issued by the cluster CA, or an API token (authorization: Bearer dvt_...), is required; get one with `devctl login` or `devctl tokens create`";

/// Checks every call's credentials; clones share the state.
#[derive(Debug, Clone)]
pub struct Authenticator {
    inner: Arc<AuthInner>,
}

#[derive(Debug)]
struct AuthInner {
    tokens: ApiTokens,
    revocations: Revocations,
    sessions: Sessions,
}

impl Authenticator {
    /// Authentication by `tokens` and certificates, minus `revocations`.
    pub fn new(tokens: ApiTokens, revocations: Revocations) -> Self {
        Self {
            inner: Arc::new(AuthInner {
                tokens,
                revocations,
                sessions: Sessions::default(),
            }),
        }
    }

    /// Caps the streams one identity may have open at once (0: no cap).
    /// Only while nothing else holds the authenticator.
    pub fn with_stream_cap(mut self, cap: usize) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_stream_cap is called before the authenticator is shared")
            .sessions
            .cap = cap;
        self
    }

    /// The API tokens.
    pub fn tokens(&self) -> &ApiTokens {
        &self.inner.tokens
    }

    /// Registers a stream of `identity` that ends at `server_stop` or when
    /// the identity's credential is revoked (also if that happened between
    /// the call's authentication and now). Refused with RESOURCE_EXHAUSTED
    /// when the identity has as many streams open as the cap allows.
    pub fn open_session(
        &self,
        identity: &Identity,
        server_stop: &CancellationToken,
    ) -> Result<Session, Status> {
        let session = self.inner.sessions.open(identity, server_stop)?;
        if self.is_revoked(identity) {
            session.stop.cancel();
        }
        Ok(session)
    }

    /// The interceptor: stores the caller's identity in the request.
    /// Agents may not use the API.
    pub fn authenticate(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let identity = self
            .identify(&req)
            .map_err(|e| refused_anonymous(&req, e))?;
        super::audit::admit(&req, &identity)?;
        if identity.role == Role::Agent {
            return Err(refusal(
                Code::PermissionDenied,
                "agent certificates may use the bus only, not the API; use an admin or developer certificate".into(),
                "ROLE_NOT_ALLOWED",
                &[("role", identity.role.to_string())],
            ));
        }
        req.extensions_mut().insert(identity);
        Ok(req)
    }

    /// The caller of `req` by its client certificate alone (as
    /// [`Authenticator::identify_certificate`]); a caller without one is
    /// held to the per-source limit of calls without credentials.
    pub fn identify_certificate_or_limit<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        self.identify_certificate(req)
            .map_err(|e| refused_anonymous(req, e))
    }

    /// The caller of `req`: its API token if it sends one, else its client
    /// certificate.
    pub fn identify<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        if let Some(value) = req.metadata().get("authorization") {
            let bearer = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "authorization metadata must read `Bearer dvt_...` (an API token)",
                    )
                })?;
            let identity = self
                .inner
                .tokens
                .check(bearer.trim(), SystemTime::now())
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            // `revoke NAME` covers the tokens that identity had made too.
            if self.inner.revocations.is_revoked(&identity) {
                return Err(Status::unauthenticated(format!(
                    "the credentials of {} have been revoked; ask an admin for new ones",
                    identity.name
                )));
            }
            return Ok(identity);
        }
        self.identify_certificate(req)
    }

    /// The caller of `req` by its client certificate alone.
    pub fn identify_certificate<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let cert = req
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| Status::unauthenticated(NEED_CREDENTIALS))?;
        let identity = Identity::from_der(cert.as_ref())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if self.inner.revocations.is_revoked(&identity) {
            return Err(Status::unauthenticated(format!(
                "the certificate of {} (serial {}) has been revoked; ask an admin for a new one",
                identity.name, identity.serial
            )));
        }
        Ok(identity)
    }

    /// Whether `id`'s credential is revoked now (streams check this when
    /// the revocation list changes).
    fn is_revoked(&self, id: &Identity) -> bool {
        if self.inner.revocations.covers(id) {
            return true;
        }
        id.serial
            .strip_prefix("token:")
            .is_some_and(|token_id| self.inner.tokens.is_revoked(token_id))
    }

    /// Ends the open streams whose credential has run out by `now`.
    pub fn close_expired(&self, now: SystemTime) {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.inner
            .sessions
            .cancel_where(|id| id.expires_at > 0 && id.expires_at <= now);
    }

    /// Ends the open streams of revoked credentials.
    pub fn close_revoked(&self) {
        self.inner.sessions.cancel_where(|id| self.is_revoked(id));
    }

    /// Until `stop`: re-reads the revocation list every `every` and ends the
    /// streams of what it revokes.
    pub async fn watch_revocations(&self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handled = self.inner.revocations.generation();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    // A call's own check may have re-read the list first:
                    // compare generations, not "did I re-read it".
                    let now = self.inner.revocations.generation();
                    if now != handled {
                        handled = now;
                        self.close_revoked();
                    }
                    self.close_expired(SystemTime::now());
                }
            }
        }
    }
}

/// The open streams by identity, so revocation can end them.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Streams one identity (by name) may have open; 0: no cap.
    cap: usize,
    next: AtomicU64,
    // std lock: held to insert, remove or scan, never across an await.
    open: Arc<Mutex<HashMap<u64, (Identity, CancellationToken)>>>,
}

/// One registered stream: its stop signal, ended by the server's stop or by
/// revocation of its identity. Dropping it unregisters the stream.
#[derive(Debug)]
pub struct Session {
    id: u64,
    stop: CancellationToken,
    server_stop: CancellationToken,
    open: Arc<Mutex<HashMap<u64, (Identity, CancellationToken)>>>,
}

impl Session {
    /// Cancelled when the stream must end.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Sends the client the reason its stream ended if that was its
    /// credential (revoked or expired; not the server stopping or the
    /// stream finishing).
    pub async fn tell_if_revoked<T>(&self, tx: &tokio::sync::mpsc::Sender<Result<T, Status>>) {
        if self.stop.is_cancelled() && !self.server_stop.is_cancelled() {
            // Waits for room (a slow reader), not for ever.
            let _ = tx
                .send_timeout(
                    Err(Status::unauthenticated(
                        "the credential of this stream has been revoked or has expired; the stream is closed",
                    )),
                    Duration::from_secs(5),
                )
                .await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.open.lock().expect("sessions lock").remove(&self.id);
    }
}

impl Sessions {
    /// Registers a stream of `identity` that also ends with `server_stop`.
    fn open(
        &self,
        identity: &Identity,
        server_stop: &CancellationToken,
    ) -> Result<Session, Status> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = server_stop.child_token();
        {
            let mut open = self.open.lock().expect("sessions lock");
            if self.cap > 0 {
                let mine = open
                    .values()
                    .filter(|(i, _)| i.name == identity.name)
                    .count();
                if mine >= self.cap {
                    return Err(refusal(
                        Code::ResourceExhausted,
                        format!(
                            "{identity} has {mine} streams open, the most one identity may (--max-streams-per-identity {}); close one (logs -f, exec, events -f, stats -w, ssh, port-forward connections) and retry",
                            self.cap
                        ),
                        "TOO_MANY_STREAMS",
                        &[("limit", self.cap.to_string()), ("open", mine.to_string())],
                    ));
                }
            }
            open.insert(id, (identity.clone(), stop.clone()));
        }
        Ok(Session {
            id,
            stop,
            server_stop: server_stop.clone(),
            open: Arc::clone(&self.open),
        })
    }

    /// Ends every stream whose identity `revoked` says so.
    pub fn cancel_where(&self, revoked: impl Fn(&Identity) -> bool) {
        for (id, stop) in self.open.lock().expect("sessions lock").values() {
            if !stop.is_cancelled() && revoked(id) {
                tracing::info!(identity = %id, "credential revoked or expired: closing its stream");
                stop.cancel();
            }
        }
    }
}

/// The identity [`Authenticator::authenticate`] stored.
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated identity"))
}

/// Which containers an identity may see: admins and viewers all of them,
/// a developer (and a viewer token made by a non-admin) only their own.
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
            _ if id.own_only => Scope::Owner(id.name.clone()),
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
    refusal(
        Code::PermissionDenied,
        format!(
            "{id} may not call {method} on container {:?}: it belongs to {}; developers act on their own containers (an admin can act for anyone)",
            c.name, c.owner
        ),
        "NOT_OWNER",
        &[
            ("container", c.name.clone()),
            ("method", method.to_string()),
        ],
    )
}

/// Refuses `id` reading container `c` (a developer reading another's).
pub fn may_see(id: &Identity, method: &str, c: &pb::Container) -> Result<(), Status> {
    if Scope::of(id).allows(&c.owner) {
        Ok(())
    } else {
        Err(not_yours(id, method, c))
    }
}

/// `c` as `id` may read it: environment values (often secrets) only for its
/// owner and admins; anyone else gets the keys with empty values.
pub fn redacted(id: &Identity, mut c: pb::Container) -> pb::Container {
    let may_read_values = id.role == Role::Admin || id.name == c.owner;
    if !may_read_values && !c.spec().env.is_empty() {
        c.spec_mut().env.values_mut().for_each(String::clear);
        c.env_redacted = true;
    }
    c
}

/// Refuses `id` changing container `c`: read-only roles, and developers
/// on another's container.
pub fn may_operate(id: &Identity, method: &str, c: &pb::Container) -> Result<(), Status> {
    may_write(id, method)?;
    may_see(id, method, c)
}

/// Refuses every identity but an admin `what` (what the call does, e.g.
/// "cordoning a node", "reading the audit log") to it.
pub fn must_be_admin(id: &Identity, method: &str, what: &str) -> Result<(), Status> {
    match id.role {
        Role::Admin => Ok(()),
        _ => Err(refusal(
            Code::PermissionDenied,
            format!("{id} may not call {method}: {what} needs the admin role"),
            "ROLE_NOT_ALLOWED",
            &[
                ("role", id.role.to_string()),
                ("method", method.to_string()),
            ],
        )),
    }
}

/// Refuses read-only identities a mutating call.
pub fn may_write(id: &Identity, method: &str) -> Result<(), Status> {
    match id.role {
        Role::Admin | Role::Developer => Ok(()),
        Role::Viewer | Role::Agent => Err(refusal(
            Code::PermissionDenied,
            format!(
                "{id} may not call {method}: the {} role is read-only",
                id.role
            ),
            "ROLE_NOT_ALLOWED",
            &[
                ("role", id.role.to_string()),
                ("method", method.to_string()),
            ],
        )),
    }
}

/// `e` (a call without usable credentials), or RESOURCE_EXHAUSTED if its
/// source address is over the limit of such calls.
fn refused_anonymous<T>(req: &Request<T>, e: Status) -> Status {
    match super::audit::admit_anonymous(req) {
        Ok(()) => e,
        Err(limited) => limited,
    }
}

/// An identity of `name` and `role` for unit tests.
#[cfg(test)]
pub(crate) fn test_identity(name: &str, role: Role) -> Identity {
    Identity {
        name: name.into(),
        role,
        serial: "1".into(),
        issued_at: 0,
        expires_at: 0,
        own_only: false,
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::{test_identity as identity, *};

    fn reason(s: &Status) -> (Code, String) {
        let info = s
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        (s.code(), info.reason)
    }

    #[test]
    fn refusals_say_why_in_error_info() {
        let viewer = identity("val", Role::Viewer);
        let bob = identity("bob", Role::Developer);
        let alices = pb::Container {
            name: "web".into(),
            owner: "alice".into(),
            ..Default::default()
        };
        let e = may_write(&viewer, "StopContainer").unwrap_err();
        assert_eq!(
            reason(&e),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
        );
        let e = may_see(&bob, "GetContainer", &alices).unwrap_err();
        assert_eq!(reason(&e), (Code::PermissionDenied, "NOT_OWNER".into()));
        assert_eq!(
            e.get_error_details().error_info().unwrap().metadata["container"],
            "web"
        );
        let e = must_be_admin(&bob, "DrainNode", "draining a node").unwrap_err();
        assert_eq!(
            reason(&e),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
        );
    }

    #[test]
    fn the_stream_cap_is_its_own_reason() {
        let sessions = Sessions {
            cap: 1,
            ..Sessions::default()
        };
        let stop = CancellationToken::new();
        let bob = identity("bob", Role::Developer);
        let _first = sessions.open(&bob, &stop).unwrap();
        let e = sessions.open(&bob, &stop).unwrap_err();
        assert_eq!(
            reason(&e),
            (Code::ResourceExhausted, "TOO_MANY_STREAMS".into())
        );
        let meta = e.get_error_details().error_info().unwrap().metadata.clone();
        assert_eq!((meta["limit"].as_str(), meta["open"].as_str()), ("1", "1"));
    }
}
