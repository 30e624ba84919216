//! `devctl.v1.EnrollService`: join tokens and CSRs in, certificates out.
//! Join needs no client certificate (the token is the credential);
//! RenewCertificate needs a valid one.

use std::time::Duration;

use devctl_proto::{
    enroll::{JoinClaims, JoinError},
    identity::Role,
    pb::{self, enroll_service_server::EnrollService},
    pki::ClusterCa,
    validate,
};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use crate::{
    datadir::DataDir,
    store::{Claim, IdentityKind, JoinOutcome, Store},
};

/// How long the certificates the scheduler signs are valid.
#[derive(Debug, Clone, Copy)]
pub struct CertPolicy {
    /// Agents' certificates.
    pub agent_ttl: Duration,
    /// Everyone else's (people, from `devctl login`).
    pub user_ttl: Duration,
}

impl CertPolicy {
    fn ttl(&self, role: Role) -> Duration {
        match role {
            Role::Agent => self.agent_ttl,
            _ => self.user_ttl,
        }
    }
}

/// The enrollment service.
#[derive(Debug, Clone)]
pub struct EnrollApi {
    data_dir: DataDir,
    ca: std::sync::Arc<ClusterCa>,
    ca_fingerprint: String,
    store: Store,
    auth: Authenticator,
    policy: CertPolicy,
}

impl EnrollApi {
    /// The service signing with the CA of `data_dir`.
    pub fn new(
        data_dir: DataDir,
        ca: ClusterCa,
        store: Store,
        auth: Authenticator,
        policy: CertPolicy,
    ) -> Result<Self, devctl_proto::pki::PkiError> {
        Ok(Self {
            ca_fingerprint: devctl_proto::pki::fingerprint(ca.cert_pem())?,
            ca: std::sync::Arc::new(ca),
            data_dir,
            store,
            auth,
            policy,
        })
    }

    fn sign(&self, csr_pem: &str, name: &str, role: Role) -> Result<pb::IssuedCertificate, Status> {
        validate::max_len("csr_pem", csr_pem, validate::limits::MAX_CSR_BYTES)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let signed = self
            .ca
            .sign_csr(csr_pem, name, role, self.policy.ttl(role))
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "csr_pem: {e}; send a PEM PKCS#10 request (devctl login and devctl-agent join make one)"
                ))
            })?;
        Ok(pb::IssuedCertificate {
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            name: name.to_string(),
            role: role.to_string(),
            serial: signed.serial,
            not_after: Some(signed.not_after.into()),
        })
    }

    /// Signs a renewal for `node`'s agent (asked over the bus, where only
    /// that agent can publish on its subject). Refused for a node no longer
    /// admitted to the bus ([`DataDir::renew_agent`] checks, before the
    /// certificate is handed out).
    pub async fn renew_agent(
        &self,
        node: &str,
        current_serial: &str,
        csr_pem: &str,
    ) -> Result<pb::IssuedCertificate, String> {
        let issued = self
            .sign(csr_pem, node, Role::Agent)
            .map_err(|s| s.message().to_string())?;
        // The new certificate becomes a bus user before the agent has it.
        let (dir, n, current, serial) = (
            self.data_dir.clone(),
            node.to_string(),
            current_serial.to_string(),
            issued.serial.clone(),
        );
        tokio::task::spawn_blocking(move || dir.renew_agent(&n, &current, &serial))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tracing::info!(node, serial = %issued.serial, "agent certificate renewed");
        Ok(issued)
    }

    /// Whether `name` is used without being in the registry: it owns a
    /// container, or an API token acts as it.
    fn name_in_use(&self, name: &str) -> Result<bool, Status> {
        let internal = |e: crate::store::StoreError| Status::internal(e.to_string());
        let filter = crate::store::ContainerFilter {
            owner: Some(name.to_string()),
            ..Default::default()
        };
        if !self
            .store
            .list_containers(None, 1, &filter)
            .map_err(internal)?
            .0
            .is_empty()
        {
            return Ok(true);
        }
        Ok(self.auth.tokens().acting_as(name))
    }
}

/// Records in the registry every identity made before it existed, or by
/// `issue-cert` while the store was held: the scheduler itself, admitted
/// agents, `issue-cert`'s pending ones, then (as people) the first admin,
/// the client bundles under `DIR/clients`, names join tokens were used for,
/// API tokens' identities and container owners. A name already recorded
/// keeps its kind.
pub async fn import_identities(
    data_dir: &DataDir,
    store: &Store,
    tokens: &crate::tokens::ApiTokens,
) -> Result<(), crate::store::StoreError> {
    let pending = data_dir.pending_identities();
    let mut names = vec![(
        devctl_proto::pki::SCHEDULER_BUS_NAME.to_string(),
        IdentityKind::Scheduler,
    )];
    names.extend(
        data_dir
            .admitted_agents()
            .unwrap_or_default()
            .into_iter()
            .map(|n| (n, IdentityKind::Agent)),
    );
    names.extend(pending.iter().cloned());
    let people = std::iter::once("admin".to_string())
        .chain(data_dir.client_bundle_names())
        .chain(store.joined_names()?)
        .chain(
            tokens
                .list()
                .into_iter()
                .filter_map(|t| Some(t.token?.identity)),
        )
        .chain(store.owners())
        .filter(|n| !n.is_empty());
    names.extend(people.map(|n| (n, IdentityKind::Person)));
    let added = store.import_identities(names).await?;
    if !added.is_empty() {
        tracing::info!(count = added.len(), "identities recorded in the registry");
    }
    let recorded: Vec<String> = pending.into_iter().map(|(n, _)| n).collect();
    data_dir.remove_pending_identities(&recorded);
    Ok(())
}

fn join_status(e: JoinError) -> Status {
    match e {
        JoinError::Malformed => Status::invalid_argument(format!("token: {e}")),
        _ => Status::unauthenticated(e.to_string()),
    }
}

#[tonic::async_trait]
impl EnrollService for EnrollApi {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        super::audit::target(&req, &req.get_ref().name);
        // The token is not checked yet: held to the per-source limit of
        // calls without credentials.
        super::audit::admit_anonymous(&req)?;
        let r = req.get_ref();
        for (field, value, max) in [
            ("token", &r.token, validate::limits::MAX_TOKEN_LEN),
            ("name", &r.name, validate::MAX_NAME_LEN),
        ] {
            validate::max_len(field, value, max)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let key = self.data_dir.join_key().map_err(|e| {
            tracing::error!(error = %e, "join key unreadable");
            Status::internal("the scheduler cannot read its join key")
        })?;
        let claims =
            JoinClaims::verify(&r.token, &key, &self.ca_fingerprint).map_err(join_status)?;
        let name = match (&claims.name, r.name.as_str()) {
            (Some(n), "") => n.clone(),
            (Some(n), asked) if asked == n => n.clone(),
            (Some(n), asked) => {
                return Err(Status::permission_denied(format!(
                    "name: this join token is for {n:?}, not {asked:?}"
                )));
            }
            (None, "") => {
                return Err(Status::invalid_argument(
                    "name: this join token names no identity; pass the name to join as (--node for agents, --name for users)",
                ));
            }
            (None, _) if matches!(claims.role, Role::Agent | Role::Admin) => {
                return Err(Status::permission_denied(format!(
                    "token: a {} token must name its identity; create one with --name",
                    claims.role
                )));
            }
            (None, asked) => asked.to_string(),
        };
        validate::dns_label("name", &name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // From here the call is attributable: the audit log records who
        // joined (the token's id stands in for a serial), and the rate
        // limit applies to that identity.
        super::audit::target(&req, &name);
        super::audit::admit(
            &req,
            &devctl_proto::identity::Identity {
                name: name.clone(),
                role: claims.role,
                serial: format!("join-token:{}", claims.id),
                issued_at: 0,
                expires_at: 0,
                own_only: false,
            },
        )?;
        let claim = if claims.name.is_some() {
            Claim::Named
        } else {
            Claim::New
        };
        let taken = |kind: &dyn std::fmt::Display| {
            Status::already_exists(format!(
                "name: {name:?} is already an identity of this cluster ({kind}); a token that names nobody cannot join as an existing identity (pick another name, or ask for a token made with --name {name})"
            ))
        };
        if claim == Claim::New && self.name_in_use(&name)? {
            return Err(taken(&"it owns containers or API tokens act as it"));
        }
        // Sign first (a bad request must not use the token up), then, in
        // one transaction, check the name is free (for a token that names
        // nobody), mark the token used and record the name; only then hand
        // the certificate out.
        let issued = self.sign(&r.csr_pem, &name, claims.role)?;
        let dir = self.data_dir.clone();
        let outcome = self
            .store
            .join(
                &claims.id,
                &name,
                IdentityKind::of(claims.role),
                claim,
                move || dir.pending_identities(),
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "recording a join");
                Status::unavailable("the scheduler could not record the join; retry")
            })?;
        match outcome {
            JoinOutcome::Joined => {}
            JoinOutcome::TokenUsed => {
                return Err(Status::unauthenticated(
                    "this join token has already been used; each token works once: create another with `devctl-scheduler token create`",
                ));
            }
            JoinOutcome::NameTaken(kind) => return Err(taken(&kind)),
        }
        if claims.role == Role::Agent {
            // Let the node onto the bus (its user and permissions).
            let (dir, node, serial) = (self.data_dir.clone(), name.clone(), issued.serial.clone());
            let reloaded = tokio::task::spawn_blocking(move || dir.admit_agent(&node, &serial))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| {
                    tracing::error!(error = %e, node = name, "admitting a node to the bus");
                    Status::internal(format!("the certificate was issued but node {name:?} could not be admitted to the bus: {e}"))
                })?;
            if !reloaded {
                tracing::warn!(
                    node = name,
                    "no local nats-server to reload: reload it (`nats-server --signal reload`) to admit the node"
                );
            }
        }
        tracing::info!(name, role = %claims.role, serial = %issued.serial, "identity joined");
        Ok(Response::new(issued))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let id = self.auth.identify_certificate_or_limit(&req)?;
        super::audit::admit(&req, &id)?;
        if id.role == devctl_proto::identity::Role::Agent {
            return Err(Status::permission_denied(format!(
                "{id} may not call RenewCertificate: agents renew their certificate over the bus (devctl-agent does so by itself), not over the API"
            )));
        }
        let issued = self.sign(&req.get_ref().csr_pem, &id.name, id.role)?;
        tracing::info!(name = %id.name, role = %id.role, serial = %issued.serial, "certificate renewed");
        Ok(Response::new(issued))
    }
}
