//! Reading containers: one record, a page of them, the owner of an id, and
//! the live fields (idle window, last use) added to what is recorded.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use devctl_proto::container::ContainerExt;
use devctl_proto::{
    pb,
    validate::{self, InvalidField, limits},
};

use super::{Cluster, DEFAULT_PAGE_SIZE, Error, MAX_PAGE_BYTES, MAX_PAGE_SIZE, error::not_found};
use crate::store::ContainerFilter;

impl Cluster {
    /// One container, as recorded.
    pub(super) fn record(&self, name: &str) -> Result<pb::Container, Error> {
        validate::dns_label("name", name)?;
        self.store().container(name)?.ok_or_else(|| not_found(name))
    }

    /// The owner of the container with engine-independent id `id`, if it
    /// is recorded.
    pub fn owner_by_id(&self, id: &str) -> Option<String> {
        let name = self.store().container_name_by_id(id).ok()??;
        Some(self.store().container(&name).ok()??.owner)
    }

    /// One container, with its live fields.
    pub fn get(&self, name: &str) -> Result<pb::Container, Error> {
        Ok(self.decorate(self.record(name)?))
    }

    /// Fills in what is not recorded: the cluster's idle window and, while
    /// the container runs, when it was last in use.
    pub(super) fn decorate(&self, mut c: pb::Container) -> pb::Container {
        let activity = &self.shared.activity;
        c.status_mut().idle_timeout_seconds = self.idle_timeout_seconds();
        if c.status().state == pb::ContainerState::Running as i32 {
            c.status_mut().last_active_time = activity.last_active(&c.name).map(Into::into);
        }
        c
    }

    /// The cluster's idle window in seconds (0: off), as containers show it.
    pub fn idle_timeout_seconds(&self) -> i64 {
        self.shared.activity.policy().timeout.as_secs() as i64
    }

    /// A page of containers.
    pub fn list(
        &self,
        req: &pb::ListContainersRequest,
    ) -> Result<pb::ListContainersResponse, Error> {
        let size = match req.page_size {
            n if n < 0 => {
                return Err(InvalidField::new(
                    "page_size",
                    "must not be negative (0 means the default, 100)",
                )
                .into());
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        validate::max_len("page_token", &req.page_token, limits::MAX_PAGE_TOKEN_LEN)?;
        for (field, value) in [("node", &req.node), ("owner", &req.owner)] {
            if !value.is_empty() {
                validate::dns_label(field, value)?;
            }
        }
        let after = if req.page_token.is_empty() {
            None
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(&req.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    InvalidField::new(
                        "page_token",
                        "is not a token this server issued; pass next_page_token from the previous response unchanged",
                    )
                })?;
            Some(bytes)
        };
        let filter = ContainerFilter {
            node: (!req.node.is_empty()).then(|| req.node.clone()),
            owner: (!req.owner.is_empty()).then(|| req.owner.clone()),
        };
        let (found, mut more) = self
            .store()
            .list_containers(after.as_deref(), size, &filter)?;
        // A page stays well within a client's default message limit (4 MiB)
        // whatever the containers carry: a full one ends early.
        let mut containers = Vec::with_capacity(found.len());
        let mut bytes = 0;
        for c in found {
            let c = self.decorate(c);
            bytes += prost::Message::encoded_len(&c);
            if bytes > MAX_PAGE_BYTES && !containers.is_empty() {
                more = true;
                break;
            }
            containers.push(c);
        }
        let next_page_token = match (more, containers.last()) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(last.name.as_bytes()),
            _ => String::new(),
        };
        Ok(pb::ListContainersResponse {
            containers,
            next_page_token,
        })
    }
}
