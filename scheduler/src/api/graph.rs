//! `devctl.v1.GraphService`: the graph projection's status and the
//! analytics ([`crate::graph`]). Decode, authorize, query, encode.

use std::time::SystemTime;

use devctl_proto::{
    identity::{Identity, Role},
    pb::{self, graph_service_server::GraphService},
};
use tonic::{Code, Request, Response, Status};

use super::{
    auth::{Scope, caller, must_be_admin},
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

    /// Runs the report `f` for `id` over the window from `since`.
    async fn report<T, F, Fut>(
        &self,
        method: &str,
        id: &Identity,
        since: Option<prost_types::Timestamp>,
        f: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(crate::graph::client::Client, SystemTime, Rows) -> Fut,
        Fut: std::future::Future<Output = Result<T, GraphError>>,
    {
        let p = self.projection(method)?;
        let since = window_start(since)?;
        let rows = rows_for(id);
        p.read(|c| f(c, since, rows))
            .await
            .map_err(|e| failed(method, e))
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

/// Who sees which rows: as for containers everywhere else (admins and
/// viewers every row, developers and own-only tokens their own).
fn rows_for(id: &Identity) -> Rows {
    match Scope::of(id) {
        Scope::All => Rows::All,
        Scope::Owner(name) => Rows::Own(name),
    }
}

fn window_start(t: Option<prost_types::Timestamp>) -> Result<SystemTime, Status> {
    t.map(|t| super::start_time("since", t))
        .transpose()
        .map(|t| t.unwrap_or(SystemTime::UNIX_EPOCH))
}

fn failed(method: &str, e: GraphError) -> Status {
    let (code, reason) = match e {
        GraphError::Config(_) => (Code::FailedPrecondition, "GRAPH_NOT_CONFIGURED"),
        _ => (Code::Unavailable, "GRAPH_UNAVAILABLE"),
    };
    refusal(code, format!("{method}: {e}"), reason, &[])
}

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn get_graph_status(
        &self,
        req: Request<pb::GetGraphStatusRequest>,
    ) -> Result<Response<pb::GraphStatus>, Status> {
        let id = caller(&req)?;
        let mut status = match &self.projection {
            Some(p) => p.status(),
            None => pb::GraphStatus::default(),
        };
        // Where the graph server is and what it said are for admins.
        if id.role != Role::Admin {
            status.uri.clear();
            if !status.last_error.is_empty() {
                status.last_error = "the graph server is not reachable (an admin sees why)".into();
            }
        }
        Ok(Response::new(status))
    }

    async fn list_image_insights(
        &self,
        req: Request<pb::ListImageInsightsRequest>,
    ) -> Result<Response<pb::ListImageInsightsResponse>, Status> {
        let id = caller(&req)?;
        let since = req.into_inner().since;
        let images = self
            .report(
                "ListImageInsights",
                &id,
                since,
                |c, since, rows| async move { insights::images(&c, since, &rows).await },
            )
            .await?;
        Ok(Response::new(pb::ListImageInsightsResponse { images }))
    }

    async fn list_user_insights(
        &self,
        req: Request<pb::ListUserInsightsRequest>,
    ) -> Result<Response<pb::ListUserInsightsResponse>, Status> {
        let id = caller(&req)?;
        let since = req.into_inner().since;
        let users = self
            .report(
                "ListUserInsights",
                &id,
                since,
                |c, since, rows| async move { insights::users(&c, since, &rows).await },
            )
            .await?;
        Ok(Response::new(pb::ListUserInsightsResponse { users }))
    }

    async fn list_host_insights(
        &self,
        req: Request<pb::ListHostInsightsRequest>,
    ) -> Result<Response<pb::ListHostInsightsResponse>, Status> {
        let id = caller(&req)?;
        let since = req.into_inner().since;
        let hosts = self
            .report(
                "ListHostInsights",
                &id,
                since,
                |c, since, rows| async move { insights::hosts(&c, since, &rows).await },
            )
            .await?;
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
