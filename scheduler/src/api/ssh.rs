//! `devctl.v1.SshService`: the cluster's SSH certificate authority. Signing
//! is the cluster's (`cluster/ssh.rs`); here callers are admitted.

use devctl_proto::pb::{self, ssh_service_server::SshService};
use tonic::{Request, Response, Status};

use super::{
    audit,
    auth::{caller, may_write},
};
use crate::cluster::Cluster;

/// The SSH service over a cluster (which holds the SSH CA).
#[derive(Debug, Clone)]
pub struct SshApi {
    cluster: Cluster,
}

impl SshApi {
    /// The service for `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl SshService for SshApi {
    async fn sign_user_key(
        &self,
        req: Request<pb::SignUserKeyRequest>,
    ) -> Result<Response<pb::SshCertificate>, Status> {
        let id = caller(&req)?;
        // The certificate's principal: whom it lets in.
        audit::target(&req, &id.name);
        // A certificate opens shells in containers: not for read-only roles.
        may_write(&id, "SignUserKey")?;
        let r = req.into_inner();
        Ok(Response::new(self.cluster.sign_user_key(
            &r.public_key,
            r.ttl_seconds,
            &id.name,
        )?))
    }

    async fn get_ssh_ca(
        &self,
        req: Request<pb::GetSshCaRequest>,
    ) -> Result<Response<pb::SshCa>, Status> {
        caller(&req)?;
        Ok(Response::new(pb::SshCa {
            public_key: self.cluster.ssh_ca_public_key(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use devctl_proto::{identity::Role, ssh};
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;
    use crate::{api::auth::test_identity, cluster::fake_link};

    fn request<T>(msg: T, name: &str, role: Role) -> Request<T> {
        let mut req = Request::new(msg);
        req.extensions_mut().insert(test_identity(name, role));
        req
    }

    fn sign(key: &str, ttl_seconds: i64) -> pb::SignUserKeyRequest {
        pb::SignUserKeyRequest {
            public_key: key.into(),
            ttl_seconds,
        }
    }

    fn reason(s: &Status) -> String {
        s.get_error_details().error_info().unwrap().reason.clone()
    }

    #[tokio::test]
    async fn sign_user_key_certifies_developers_for_themselves_only() {
        let f = fake_link::cluster();
        let api = SshApi::new(f.cluster.clone());
        let key = ssh::new_key("bob@laptop").unwrap();
        let line = key.public_key().to_openssh().unwrap();

        let e = api
            .sign_user_key(request(sign(&line, 0), "val", Role::Viewer))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e)),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
        );

        let e = api
            .sign_user_key(request(sign("ssh-rsa AAAA x", 0), "bob", Role::Developer))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("public_key:"), "{}", e.message());
        assert!(
            e.message().contains("ssh-keygen -t ed25519"),
            "{}",
            e.message()
        );
        let bad = e
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .clone();
        assert_eq!(bad.field, "public_key");

        let too_long = 8 * 3600 + 1;
        let e = api
            .sign_user_key(request(sign(&line, too_long), "bob", Role::Developer))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("ttl_seconds:"), "{}", e.message());

        let signed = api
            .sign_user_key(request(sign(&line, 0), "bob", Role::Developer))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(signed.principal, "bob");
        let ca = api
            .get_ssh_ca(request(pb::GetSshCaRequest {}, "val", Role::Viewer))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ca.public_key, signed.ca_public_key);
        let ca = ssh::parse_public_key(&ca.public_key).unwrap();
        let cert = ssh::ssh_key::Certificate::from_openssh(&signed.certificate).unwrap();
        ssh::check_user_certificate(&cert, &ca, "bob").unwrap();
        let e = ssh::check_user_certificate(&cert, &ca, "alice").unwrap_err();
        assert!(e.to_string().contains("not for \"alice\""), "{e}");
    }
}
