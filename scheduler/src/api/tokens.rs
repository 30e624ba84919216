//! `devctl.v1.TokenService`: API tokens for scripts and generated clients.

use std::time::{Duration, SystemTime};

use devctl_proto::{
    identity::Role,
    pb::{self, token_service_server::TokenService},
    validate,
};
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, caller, may_write};
use crate::{
    store::{Store, StoreError},
    tokens,
};

/// A token's lifetime when the request sets none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest lifetime a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The token service.
#[derive(Debug, Clone)]
pub struct TokenApi {
    store: Store,
    auth: Authenticator,
}

impl TokenApi {
    /// The service over `store`'s tokens, shared with `auth`.
    pub fn new(store: Store, auth: Authenticator) -> Self {
        Self { store, auth }
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NameTaken(n) => Status::already_exists(format!(
            "name: a token named {n:?} exists (names are not reused, even after revocation); pick another"
        )),
        other => {
            tracing::error!(error = %other, "token store");
            Status::internal(other.to_string())
        }
    }
}

fn mine(me: &devctl_proto::identity::Identity, t: &pb::ApiToken) -> bool {
    me.role == Role::Admin || t.identity == me.name || t.created_by == me.name
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let me = caller(&req)?;
        super::audit::target(&req, &req.get_ref().name);
        may_write(&me, "CreateToken")?;
        if me.serial.starts_with("token:") {
            return Err(Status::permission_denied(
                "API tokens cannot create tokens (a token must not outlive or outrank what made it); create it with a certificate (devctl login)",
            ));
        }
        let r = req.into_inner();
        validate::dns_label("name", &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let role: Role = if r.role.is_empty() {
            Role::Developer
        } else {
            r.role
                .parse()
                .map_err(|_| Status::invalid_argument("role: use admin, developer or viewer"))?
        };
        if role == Role::Agent {
            return Err(Status::invalid_argument(
                "role: agents use certificates on the bus, not API tokens; use admin, developer or viewer",
            ));
        }
        let identity = if me.role == Role::Admin {
            if r.identity.is_empty() {
                r.name.clone()
            } else {
                validate::dns_label("identity", &r.identity)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                r.identity.clone()
            }
        } else {
            if role == Role::Admin {
                return Err(Status::permission_denied(format!(
                    "{me} may not create an admin token; developers create developer or viewer tokens for themselves"
                )));
            }
            if !r.identity.is_empty() && r.identity != me.name {
                return Err(Status::permission_denied(format!(
                    "{me} may not create a token acting as {:?}; only admins act for others",
                    r.identity
                )));
            }
            me.name.clone()
        };
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TTL,
            s if s < 0 => {
                return Err(Status::invalid_argument(
                    "ttl_seconds: must not be negative (0: 30 days)",
                ));
            }
            s => Duration::from_secs(s as u64),
        };
        if ttl > MAX_TTL {
            return Err(Status::invalid_argument(
                "ttl_seconds: at most 365 days; tokens must expire",
            ));
        }
        // A token never carries more than its creator: a non-admin's
        // viewer token reads only its creator's containers.
        let own_containers_only =
            role == Role::Viewer && (me.role != Role::Admin || identity == me.name);
        let now = SystemTime::now();
        let new = tokens::mint(pb::ApiToken {
            name: r.name.clone(),
            identity,
            role: role.to_string(),
            own_containers_only,
            created_by: me.name.clone(),
            create_time: Some(now.into()),
            expire_time: Some((now + ttl).into()),
            ..Default::default()
        });
        self.store
            .insert_api_token(new.stored.clone())
            .await
            .map_err(store_status)?;
        let record = new.stored.token.clone();
        self.auth.tokens().put(new.stored);
        tracing::info!(token = %r.name, by = %me, "API token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: record,
            secret: new.secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let me = caller(&req)?;
        let tokens = self
            .auth
            .tokens()
            .list()
            .into_iter()
            .filter_map(|t| t.token)
            .filter(|t| mine(&me, t) || (me.role == Role::Viewer && !me.own_only))
            .map(|mut t| {
                t.own_containers_only = tokens::own_containers_only(&t);
                t
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        let me = caller(&req)?;
        super::audit::target(&req, &req.get_ref().name);
        may_write(&me, "RevokeToken")?;
        let name = &req.get_ref().name;
        let mut stored = self
            .auth
            .tokens()
            .by_name(name)
            .ok_or_else(|| Status::not_found(format!("name: no token named {name:?}")))?;
        let record = stored
            .token
            .as_mut()
            .ok_or_else(|| Status::internal("token record without a body"))?;
        if !mine(&me, record) {
            return Err(Status::permission_denied(format!(
                "{me} may not revoke token {name:?}: it acts as {}; revoke your own tokens (an admin can revoke any)",
                record.identity
            )));
        }
        if record.revoke_time.is_none() {
            record.revoke_time = Some(SystemTime::now().into());
            self.store
                .update_api_token(stored.clone())
                .await
                .map_err(store_status)?;
            self.auth.tokens().put(stored.clone());
            self.auth.close_revoked();
            tracing::info!(token = %name, by = %me, "API token revoked");
        }
        Ok(Response::new(stored.token.unwrap_or_default()))
    }
}
