//! `devctl.v1.BuildService`: the context arrives in pieces after `start`,
//! is held (up to the cluster's limit) until complete, then every chosen
//! node builds it at once; their output and results are interleaved into
//! the client's stream.

use std::sync::Arc;

use devctl_proto::{
    pb::{self, build_input::Input, build_output::Output, build_service_server::BuildService},
    validate::InvalidField,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    StreamApi, audit,
    auth::{caller, may_write},
    send_or_stop,
};
use crate::cluster::{BuildEvent, BuildJob, Error, check_build};

#[tonic::async_trait]
impl BuildService for StreamApi {
    type BuildStream = ReceiverStream<Result<pb::BuildOutput, Status>>;

    async fn build(
        &self,
        req: Request<Streaming<pb::BuildInput>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let id = caller(&req)?;
        let audit = audit::call(&req);
        may_write(&id, "Build")?;
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(pb::BuildInput {
                input: Some(Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of Build must be `start` (tag, Dockerfile, node)",
                ));
            }
        };
        if let Some(call) = &audit {
            call.target(&start.tag);
        }
        check_build("start", &start.tag, &start.dockerfile, &start.build_args)?;
        let max = self.cluster.max_build_context();
        if start.context_size > max {
            return Err(Error::from(InvalidField::new(
                "start.context_size",
                format!(
                    "the build context is {} bytes; this cluster takes at most {max} (--max-build-context): list what the build does not need in .dockerignore",
                    start.context_size
                ),
            ))
            .into());
        }
        let nodes = self.cluster.build_nodes(&start.node, start.all_nodes)?;
        let session = self.session(&id)?;
        let stop = session.stop().clone();

        // The whole context first: every node gets the same bytes.
        let mut context = Vec::with_capacity(start.context_size.min(max) as usize);
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return Err(Status::cancelled("the server is stopping")),
                msg = inbound.message() => msg?,
            };
            match msg.and_then(|m| m.input) {
                Some(Input::Context(piece)) => {
                    if (context.len() + piece.len()) as u64 > start.context_size.min(max) {
                        return Err(Error::from(InvalidField::new(
                            "context",
                            format!(
                                "more context arrived than start.context_size ({} bytes) announced",
                                start.context_size
                            ),
                        ))
                        .into());
                    }
                    context.extend_from_slice(&piece);
                }
                Some(Input::ContextEnd(_)) => break,
                Some(Input::Start(_)) => {
                    return Err(Status::invalid_argument(
                        "only the first message of Build may be `start`",
                    ));
                }
                None => {
                    return Err(Status::invalid_argument(
                        "the build context ended without `context_end` (the client went away?)",
                    ));
                }
            }
        }
        let job = Arc::new(BuildJob {
            tag: start.tag,
            dockerfile: start.dockerfile,
            build_args: start.build_args,
            context: Arc::new(context),
            skip_if_present: false,
            actor: id.name.clone(),
            reason: "build",
        });

        let (tx, rx) = mpsc::channel(16);
        let cluster = self.cluster.clone();
        self.streams.spawn(async move {
            let (events_tx, mut events) = mpsc::channel::<BuildEvent>(16);
            let (results_tx, mut results) = mpsc::channel::<pb::BuildResult>(nodes.len());
            let builds = tokio_util::task::TaskTracker::new();
            for node in nodes {
                let (cluster, job, events_tx, results_tx) = (
                    cluster.clone(),
                    Arc::clone(&job),
                    events_tx.clone(),
                    results_tx.clone(),
                );
                builds.spawn(async move {
                    let outcome = cluster.build_on(&node, &job, &events_tx).await;
                    let _ = results_tx
                        .send(pb::BuildResult {
                            node,
                            tag: job.tag.clone(),
                            error: outcome.err().unwrap_or_default(),
                        })
                        .await;
                });
            }
            builds.close();
            drop((events_tx, results_tx));
            let (mut events_open, mut results_open) = (true, true);
            while events_open || results_open {
                let out = tokio::select! {
                    _ = stop.cancelled() => break,
                    e = events.recv(), if events_open => match e {
                        Some(BuildEvent::Output { node, data }) => {
                            Output::Log(pb::BuildLog { node, data })
                        }
                        None => { events_open = false; continue; }
                    },
                    r = results.recv(), if results_open => match r {
                        Some(result) => Output::Result(result),
                        None => { results_open = false; continue; }
                    },
                };
                let item = Ok(pb::BuildOutput { output: Some(out) });
                if !send_or_stop(&tx, item, &stop).await {
                    break;
                }
            }
            // A client gone or the server stopping: the builds' readers
            // are dropped, which ends each build's output pipe.
            drop(events);
            builds.wait().await;
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
