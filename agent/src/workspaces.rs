//! Receiving a workspace moved from another node: the archive arrives on
//! the `down` pipe (the scheduler relays it from the sending agent), goes
//! straight into the engine (no file on the agent's disk), and the outcome
//! goes back on `up` as one last chunk: `end`, with `error` on failure.

use std::sync::Arc;

use devctl_proto::pb;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{
    bus,
    dispatch::Dispatcher,
    runtime::{ContainerRuntime, WorkspaceData},
};

/// Serves one ReceiveWorkspaceCommand whose pipes are open and whose
/// reply is sent; ends when the copy is done, failed, or the agent stops.
pub async fn serve_receive<R: ContainerRuntime>(
    dispatcher: Arc<Dispatcher<R>>,
    cmd: pb::ReceiveWorkspaceCommand,
    pipes: bus::TunnelPipes,
    stop: CancellationToken,
    count: bus::StreamCount,
) {
    let _counted = count.counted();
    let bus::TunnelPipes { mut up, down } = pipes;
    // Held until the outcome is sent: while the receiver lives it tells
    // the scheduler that this end does (its keepalive), also between the
    // archive's end and the engine's answer.
    let down = Arc::new(tokio::sync::Mutex::new(down));
    let w = cmd.workspace.unwrap_or_default();
    let started = std::time::Instant::now();
    // The pipe as a byte stream; a pipe that fails fails the upload (the
    // engine then keeps nothing of it).
    let data: WorkspaceData = futures::stream::unfold(Some(Arc::clone(&down)), |down| async move {
        let down = down?;
        let next = down.lock().await.recv().await;
        match next {
            None => None,
            Some(Ok(bytes)) => Some((Ok(bytes), Some(down))),
            Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    })
    .boxed();
    let outcome = tokio::select! {
        r = dispatcher.receive_workspace(&w, data) => r.map_err(|e| e.to_string()),
        _ = stop.cancelled() => Err("the agent is stopping".to_string()),
    };
    match &outcome {
        Ok(()) => {
            tracing::info!(workspace = %w.name, elapsed = ?started.elapsed(), "workspace received")
        }
        Err(e) => tracing::warn!(workspace = %w.name, error = %e, "receiving workspace failed"),
    }
    up.finish(outcome.err().as_deref()).await;
    drop(down);
}
