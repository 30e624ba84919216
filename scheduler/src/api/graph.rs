//! `devctl.v1.GraphService`: the graph projection's status and the
//! analytics ([`crate::graph`]). Decode, authorize, query, encode.

use std::time::SystemTime;

use devctl_proto::{
    identity::{Identity, Role},
    pb::{self, graph_service_server::GraphService},
};
use tonic::{Code, Request, Response, Status};

use super::{
    auth::{caller, must_be_admin},
    status::refusal,
};
use crate::graph::{
    GraphError, Projection,
    insights::{self, Rows},
};

/// The service; `None`: the scheduler runs without a graph.
#[derive(Debug, Clone)]
pub struct GraphApi {
    projection: Option<Projection>,
}

impl GraphApi {
    /// The service over `projection`, if a graph is configured.
    pub fn new(projection: Option<Projection>) -> Self {
        Self { projection }
    }

    fn projection(&self, method: &str) -> Result<&Projection, Status> {
        self.projection.as_ref().ok_or_else(|| {
            refusal(
                Code::FailedPrecondition,
                format!(
                    "{method}: this cluster has no graph; start the scheduler with --neo4j-uri bolt://HOST:7687 --neo4j-user USER --neo4j-password-file FILE (see docs/graph.md)"
                ),
                "GRAPH_NOT_CONFIGURED",
                &[],
            )
        })
    }
}

/// Admins see every row; everyone else their own.
fn rows_for(id: &Identity) -> Rows {
    match id.role {
        Role::Admin if !id.own_only => Rows::All,
        _ => Rows::Own(id.name.clone()),
    }
}

fn since(t: Option<prost_types::Timestamp>) -> Result<SystemTime, Status> {
    t.map(|t| super::start_time("since", t))
        .transpose()
        .map(|t| t.unwrap_or(SystemTime::UNIX_EPOCH))
}

fn failed(method: &str, e: GraphError) -> Status {
    let code = match e {
        GraphError::Config(_) => Code::FailedPrecondition,
        _ => Code::Unavailable,
    };
    Status::new(code, format!("{method}: {e}"))
}

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn get_graph_status(
        &self,
        req: Request<pb::GetGraphStatusRequest>,
    ) -> Result<Response<pb::GraphStatus>, Status> {
        caller(&req)?;
        Ok(Response::new(match &self.projection {
            Some(p) => p.status(),
            None => pb::GraphStatus::default(),
        }))
    }

    async fn list_image_insights(
        &self,
        req: Request<pb::ListImageInsightsRequest>,
    ) -> Result<Response<pb::ListImageInsightsResponse>, Status> {
        const M: &str = "ListImageInsights";
        let id = caller(&req)?;
        let p = self.projection(M)?;
        let since = since(req.into_inner().since)?;
        let client = p.client().map_err(|e| failed(M, e))?;
        let images = insights::images(&client, since, &rows_for(&id))
            .await
            .map_err(|e| failed(M, e))?;
        Ok(Response::new(pb::ListImageInsightsResponse { images }))
    }

    async fn list_user_insights(
        &self,
        req: Request<pb::ListUserInsightsRequest>,
    ) -> Result<Response<pb::ListUserInsightsResponse>, Status> {
        const M: &str = "ListUserInsights";
        let id = caller(&req)?;
        let p = self.projection(M)?;
        let since = since(req.into_inner().since)?;
        let client = p.client().map_err(|e| failed(M, e))?;
        let users = insights::users(&client, since, &rows_for(&id))
            .await
            .map_err(|e| failed(M, e))?;
        Ok(Response::new(pb::ListUserInsightsResponse { users }))
    }

    async fn list_host_insights(
        &self,
        req: Request<pb::ListHostInsightsRequest>,
    ) -> Result<Response<pb::ListHostInsightsResponse>, Status> {
        const M: &str = "ListHostInsights";
        let id = caller(&req)?;
        let p = self.projection(M)?;
        let since = since(req.into_inner().since)?;
        let client = p.client().map_err(|e| failed(M, e))?;
        let hosts = insights::hosts(&client, since, &rows_for(&id))
            .await
            .map_err(|e| failed(M, e))?;
        Ok(Response::new(pb::ListHostInsightsResponse { hosts }))
    }

    async fn resync_graph(
        &self,
        req: Request<pb::ResyncGraphRequest>,
    ) -> Result<Response<pb::GraphStatus>, Status> {
        const M: &str = "ResyncGraph";
        let id = caller(&req)?;
        must_be_admin(&id, M, "re-projecting the graph")?;
        let p = self.projection(M)?;
        p.resync();
        Ok(Response::new(p.status()))
    }
}
