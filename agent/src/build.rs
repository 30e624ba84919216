//! Image builds: the context arrives from the scheduler on the `down`
//! pipe, the engine builds it, its output goes back on the `up` pipe (see
//! `BuildCommand` in bus.proto).
//!
//! ```text
//!  scheduler ==down: context (tar)==> agent --> engine: POST /build
//!            <==up: build output=====       <--
//! ```
//!
//! The context is read whole first (at most the size the command
//! announced, itself at most [`MAX_CONTEXT`]): the engine takes it as one
//! request body. A failed build ends `up` with the engine's error; the
//! scheduler's loss (its pipe falls silent or cancels) or the agent's
//! shutdown ends the build.

use std::sync::Arc;

use devctl_proto::{
    pb,
    pipe::{PipeError, PipeReceiver, PipeSender},
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{
    bus,
    dispatch::Dispatcher,
    runtime::{ContainerRuntime, ImageBuild},
};

/// The largest context an agent takes, whatever the scheduler allows.
pub const MAX_CONTEXT: u64 = 4 << 30;

/// A build the dispatcher accepted: its pipes are still to be opened
/// (before the command is answered).
#[derive(Debug, Clone)]
pub struct OpenedBuild {
    /// What to build.
    pub command: pb::BuildCommand,
    /// Agent -> scheduler: output.
    pub up: pb::StreamSetup,
    /// Scheduler -> agent: the context.
    pub down: pb::StreamSetup,
}

/// Checks a build command: its pipes, its size. `Err`: why it is refused.
pub fn accept(command: pb::BuildCommand) -> Result<OpenedBuild, String> {
    let (Some(up), Some(down)) = (command.up.clone(), command.down.clone()) else {
        return Err("build: no stream setup".into());
    };
    if command.tag.is_empty() {
        return Err("build: no tag".into());
    }
    if command.context_size > MAX_CONTEXT {
        return Err(format!(
            "build: a context of {} bytes is over the agent's limit of {MAX_CONTEXT}",
            command.context_size
        ));
    }
    Ok(OpenedBuild { command, up, down })
}

/// Serves one build until its output ends, a pipe fails or `stop` is
/// cancelled (the agent is stopping). Counted in `count` while it runs.
pub async fn serve<R: ContainerRuntime>(
    build: OpenedBuild,
    pipes: bus::TunnelPipes,
    dispatcher: Arc<Dispatcher<R>>,
    stop: CancellationToken,
    count: bus::StreamCount,
) {
    let _counted = count.counted();
    let bus::TunnelPipes { mut up, mut down } = pipes;
    let cmd = build.command;
    let started = std::time::Instant::now();
    let outcome = tokio::select! {
        _ = stop.cancelled() => Err("the agent is stopping".to_string()),
        done = run(&cmd, &mut up, &mut down, dispatcher.runtime()) => done,
    };
    match &outcome {
        Ok(()) => {
            tracing::info!(tag = %cmd.tag, session = %cmd.session, took = ?started.elapsed(), "build done")
        }
        Err(e) => {
            tracing::info!(tag = %cmd.tag, session = %cmd.session, error = %e, "build failed")
        }
    }
    down.cancel().await;
    up.finish(outcome.err().as_deref()).await;
}

async fn run<R: ContainerRuntime>(
    cmd: &pb::BuildCommand,
    up: &mut PipeSender,
    down: &mut PipeReceiver,
    runtime: &R,
) -> Result<(), String> {
    if cmd.skip_if_present
        && runtime
            .image_present(&cmd.tag)
            .await
            .map_err(|e| e.to_string())?
    {
        tracing::info!(tag = %cmd.tag, session = %cmd.session, "the image is present: build skipped");
        // The scheduler recognises this exact first chunk (cluster/build.rs).
        let _ = send(
            up,
            format!("image {} is already on this node\n", cmd.tag).as_bytes(),
        )
        .await;
        return Ok(());
    }
    let mut context = Vec::with_capacity(cmd.context_size.min(64 << 20) as usize);
    loop {
        let next = tokio::time::timeout(devctl_proto::bus::STREAM_IDLE_LIMIT, down.recv()).await;
        let Ok(next) = next else {
            return Err("the scheduler stopped sending the context".into());
        };
        match next {
            Some(Ok(piece)) => {
                if (context.len() + piece.len()) as u64 > cmd.context_size {
                    return Err(format!(
                        "more context arrived than the {} bytes announced",
                        cmd.context_size
                    ));
                }
                context.extend_from_slice(&piece);
            }
            Some(Err(e)) => return Err(format!("receiving the context: {e}")),
            None => break,
        }
    }
    let mut output = runtime.build_image(ImageBuild {
        tag: cmd.tag.clone(),
        dockerfile: cmd.dockerfile.clone(),
        build_args: cmd.build_args.clone(),
        context,
    });
    while let Some(item) = output.next().await {
        match item {
            Ok(text) => send(up, &text).await?,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Sends `data` up, the error as the scheduler's side caused it (also for
/// image imports).
pub(crate) async fn send(up: &mut PipeSender, data: &[u8]) -> Result<(), String> {
    up.send(data).await.map_err(|e: PipeError| match e {
        PipeError::Cancelled => "the scheduler stopped reading".to_string(),
        other => other.to_string(),
    })
}
