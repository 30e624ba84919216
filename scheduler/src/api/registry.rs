//! `devctl.v1.RegistryService`: registry credentials an admin stores for
//! the agents' pulls. Admins only; a password is never returned, logged or
//! put in the audit record (which has the method, caller, host and
//! outcome).

use std::time::SystemTime;

use devctl_proto::pb::{self, registry_service_server::RegistryService};
use tonic::{Code, Request, Response, Status};

use super::{
    auth::{caller, must_be_admin},
    status::refusal,
};
use crate::store::{Store, VaultError};

/// The most a password or token may be (registry tokens are JWTs of a few
/// KiB at most).
const MAX_PASSWORD: usize = 16 * 1024;

/// The registry service.
#[derive(Debug, Clone)]
pub struct RegistryApi {
    store: Store,
}

impl RegistryApi {
    /// The service over `store`'s registry credentials.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn vault_status(e: VaultError) -> Status {
    tracing::error!(error = %e, "registry credentials");
    refusal(Code::Internal, e.to_string(), "INTERNAL", &[])
}

/// A malformed request field: INVALID_ARGUMENT naming it.
fn invalid(field: &str, message: String) -> Status {
    refusal(
        Code::InvalidArgument,
        message,
        "INVALID_ARGUMENT",
        &[("field", field.to_string())],
    )
}

fn host_of(field: &str, host: &str) -> Result<String, Status> {
    devctl_proto::registry::normalize_host(field, host).map_err(|m| invalid(field, m))
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn add_registry(
        &self,
        req: Request<pb::AddRegistryRequest>,
    ) -> Result<Response<pb::Registry>, Status> {
        let me = caller(&req)?;
        super::audit::target(&req, &req.get_ref().host);
        must_be_admin(&me, "AddRegistry", "storing registry credentials")?;
        let r = req.into_inner();
        let host = host_of("host", &r.host)?;
        if r.username.is_empty()
            || r.username.len() > 256
            || r.username.chars().any(char::is_control)
        {
            return Err(invalid(
                "username",
                "username: required, at most 256 characters, no control characters (--username USER)".into(),
            ));
        }
        if r.password.is_empty() {
            return Err(invalid(
                "password",
                "password: required; pipe it in with --password-stdin".into(),
            ));
        }
        if r.password.len() > MAX_PASSWORD {
            return Err(invalid(
                "password",
                "password: longer than 16 KiB; give the registry's password or access token".into(),
            ));
        }
        let now = SystemTime::now();
        let record = pb::Registry {
            host: host.clone(),
            username: r.username.clone(),
            create_time: Some(now.into()),
            update_time: Some(now.into()),
            created_by: me.name.clone(),
        };
        let stored = self
            .store
            .put_registry(record, r.password)
            .await
            .map_err(vault_status)?;
        tracing::info!(registry = %host, username = %stored.username, by = %me, "registry credentials stored");
        Ok(Response::new(stored))
    }

    async fn list_registries(
        &self,
        req: Request<pb::ListRegistriesRequest>,
    ) -> Result<Response<pb::ListRegistriesResponse>, Status> {
        let me = caller(&req)?;
        must_be_admin(&me, "ListRegistries", "reading registry credentials")?;
        let registries = self
            .store
            .registries()
            .map_err(|e| vault_status(e.into()))?;
        Ok(Response::new(pb::ListRegistriesResponse { registries }))
    }

    async fn remove_registry(
        &self,
        req: Request<pb::RemoveRegistryRequest>,
    ) -> Result<Response<pb::Registry>, Status> {
        let me = caller(&req)?;
        super::audit::target(&req, &req.get_ref().host);
        must_be_admin(&me, "RemoveRegistry", "removing registry credentials")?;
        let host = host_of("host", &req.get_ref().host)?;
        match self
            .store
            .remove_registry(&host)
            .await
            .map_err(|e| vault_status(e.into()))?
        {
            Some(r) => {
                tracing::info!(registry = %host, by = %me, "registry credentials removed");
                Ok(Response::new(r))
            }
            None => Err(refusal(
                Code::NotFound,
                format!(
                    "host: no credentials are stored for registry {host:?}; `devctl registries ls` lists them"
                ),
                "NOT_FOUND",
                &[("resourceType", "registry".into()), ("name", host)],
            )),
        }
    }
}
