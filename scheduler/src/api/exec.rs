//! `devctl.v1.ExecService`.

use devctl_proto::pb::{
    self, exec_input::Input, exec_output::Output, exec_service_server::ExecService,
};
use devctl_proto::validate::limits::MAX_TERMINAL_SIZE;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    NodeStream, StreamApi, audit,
    auth::{caller, may_write},
    send_or_stop,
};

#[tonic::async_trait]
impl ExecService for StreamApi {
    type ExecStream = ReceiverStream<Result<pb::ExecOutput, Status>>;

    async fn exec(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let id = caller(&req)?;
        let audit = audit::call(&req);
        may_write(&id, "Exec")?;
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(pb::ExecInput {
                input: Some(Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of Exec must be `start` (name and command)",
                ));
            }
        };
        if let Some(call) = &audit {
            call.target(&start.name);
        }
        let revocable = self.container_session(&id, "Exec", &start.name)?;
        let (reader, input, session) = self.cluster.open_exec(start, &id.name).await?;
        let (tx, rx) = mpsc::channel(16);
        let output_done = CancellationToken::new();

        // Client -> agent: stdin, resizes; closing the send side closes stdin.
        let (stop, done) = (revocable.stop().clone(), output_done.clone());
        self.streams.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = done.cancelled() => break,
                    msg = inbound.message() => msg,
                };
                let forward = match msg {
                    Ok(Some(m)) => m.input,
                    // The client closed its side, or went away: no more
                    // stdin, whichever way.
                    Ok(None) | Err(_) => Some(Input::CloseStdin(true)),
                };
                let pieces: Vec<Input> = match forward {
                    // Bus messages stay small whatever the client sends.
                    Some(Input::Stdin(bytes)) => bytes
                        .chunks(devctl_proto::bus::STREAM_CHUNK_MAX)
                        .map(|p| Input::Stdin(p.to_vec()))
                        .collect(),
                    // Within what any terminal is.
                    Some(Input::Resize(s)) => vec![Input::Resize(pb::TerminalSize {
                        rows: s.rows.min(MAX_TERMINAL_SIZE),
                        cols: s.cols.min(MAX_TERMINAL_SIZE),
                    })],
                    // Only the first message may start the session.
                    Some(Input::Start(_)) | None => continue,
                    Some(other) => vec![other],
                };
                let mut ended = false;
                for piece in pieces {
                    ended |= matches!(piece, Input::CloseStdin(_));
                    let msg = pb::ExecInput { input: Some(piece) };
                    // The agent answers once the command took the input.
                    ended |= tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = done.cancelled() => true,
                        sent = input.send(msg) => sent.is_err(),
                    };
                }
                if ended {
                    break;
                }
            }
        });

        // Agent -> client: output, then the exit code.
        let (stop, cluster) = (revocable.stop().clone(), self.cluster.clone());
        let mut stream = NodeStream::new(reader, self.cluster.clone());
        self.streams.spawn(async move {
            let mut failed = false;
            while let Some(next) = stream.next(&tx, &stop).await {
                let item = match next {
                    Ok((which, data)) => Ok(pb::ExecOutput {
                        output: Some(Output::Chunk(pb::LogChunk {
                            stream: which as i32,
                            data,
                        })),
                    }),
                    Err(e) => {
                        failed = true;
                        Err(Status::unavailable(e.to_string()))
                    }
                };
                if !send_or_stop(&tx, item, &stop).await || failed {
                    break;
                }
            }
            output_done.cancel();
            let code = stream.exit_code();
            match code {
                Some(code) => {
                    let last = Ok(pb::ExecOutput {
                        output: Some(Output::ExitCode(code)),
                    });
                    send_or_stop(&tx, last, &stop).await;
                }
                None if !failed => {
                    let last = Err(Status::unavailable(
                        "the session ended without an exit code (agent or scheduler stopping?)",
                    ));
                    send_or_stop(&tx, last, &stop).await;
                }
                None => {}
            }
            cluster.session_ended(&session, code).await;
            stream.close().await;
            revocable.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
