//! `devctl.v1.TemplateService`: anyone may read templates; developers and
//! admins apply them; deleting one is an admin's (others' containers may
//! be made from it).

use devctl_proto::pb::{self, template_service_server::TemplateService};
use tonic::{Request, Response, Status};

use super::{
    audit,
    auth::{caller, may_write, must_be_admin},
};
use crate::cluster::Cluster;

/// The template service over a cluster.
#[derive(Debug, Clone)]
pub struct TemplateApi {
    cluster: Cluster,
}

impl TemplateApi {
    /// The service for `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl TemplateService for TemplateApi {
    async fn apply_template(
        &self,
        req: Request<pb::ApplyTemplateRequest>,
    ) -> Result<Response<pb::ApplyTemplateResponse>, Status> {
        let id = caller(&req)?;
        may_write(&id, "ApplyTemplate")?;
        let call = audit::call(&req);
        let r = req.into_inner();
        let (template, created, unchanged) = self.cluster.apply_template(&r.yaml, &id.name).await?;
        if let Some(call) = &call {
            call.target(&template.name);
        }
        Ok(Response::new(pb::ApplyTemplateResponse {
            template: Some(template),
            created,
            unchanged,
        }))
    }

    async fn list_templates(
        &self,
        req: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        caller(&req)?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: self.cluster.templates()?,
        }))
    }

    async fn get_template(
        &self,
        req: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        Ok(Response::new(self.cluster.template(&req.get_ref().name)?))
    }

    async fn delete_template(
        &self,
        req: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<pb::DeleteTemplateResponse>, Status> {
        let id = caller(&req)?;
        audit::target(&req, &req.get_ref().name);
        must_be_admin(&id, "DeleteTemplate", "deleting a template")?;
        let name = req.into_inner().name;
        self.cluster.delete_template(&name).await?;
        Ok(Response::new(pb::DeleteTemplateResponse { name }))
    }
}
