//! The command of one SSH session channel: its output to the channel
//! (within the client's window), the client's input, terminal size and
//! signals to it; then EOF, the exit status and the channel's close.

use std::pin::Pin;

use devctl_proto::pb;
use futures::StreamExt;
use russh::{ChannelWriteHalf, server::Msg};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use crate::runtime::{ExecControl, ExecSession, OutputChunks};

/// What the handler passes on to a running command.
pub(super) struct Input {
    /// Input bytes; closed at the client's EOF.
    pub(super) stdin: mpsc::Receiver<Vec<u8>>,
    /// Terminal size (rows, cols), with a terminal.
    pub(super) size: Option<watch::Receiver<(u16, u16)>>,
    pub(super) signals: mpsc::Receiver<nix::sys::signal::Signal>,
}

/// Runs until the command's output ends (then reports its exit status and
/// closes the channel) or `closed` is cancelled (the client closed the
/// channel, or the connection ended); either way the command is ended if
/// it still runs.
pub(super) async fn run(
    exec: ExecSession,
    writer: ChannelWriteHalf<Msg>,
    input: Input,
    closed: CancellationToken,
) {
    let ExecSession {
        output,
        input: stdin,
        control,
    } = exec;
    let delivered = tokio::select! {
        delivered = forward_output(output, &writer) => delivered,
        () = drive(stdin, input, control.as_ref()) => false,
        _ = closed.cancelled() => false,
    };
    if delivered {
        let code = control.exit_code().await;
        let _ = writer.eof().await;
        if let Some(code) = code {
            let _ = writer.exit_status(u32::try_from(code).unwrap_or(255)).await;
        }
        let _ = writer.close().await;
    }
    // Nothing the session started may keep running.
    control.end().await;
}

/// The command's output to the channel; `false` when the channel went away
/// first.
async fn forward_output(mut output: OutputChunks, writer: &ChannelWriteHalf<Msg>) -> bool {
    while let Some(chunk) = output.next().await {
        let sent = match chunk {
            Ok((pb::OutputStream::Stderr, data)) => writer.extended_data_bytes(1, data).await,
            Ok((_, data)) => writer.data_bytes(data).await,
            Err(e) => {
                tracing::debug!(error = %e, "exec output ended with an error");
                break;
            }
        };
        if sent.is_err() {
            return false;
        }
    }
    true
}

/// Feeds the command's stdin, terminal size and signals; never returns
/// (the output's end decides).
async fn drive(
    stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    input: Input,
    control: &dyn ExecControl,
) {
    let Input {
        stdin: mut bytes,
        size,
        mut signals,
    } = input;
    let size = &size;
    let feed = async {
        let mut stdin = stdin;
        while let Some(data) = bytes.recv().await {
            // A command that stopped reading: keep draining, so the
            // connection is not held.
            if let Some(w) = stdin.as_mut()
                && w.write_all(&data).await.is_err()
            {
                stdin = None;
            }
        }
        // The client's EOF closes a plain command's stdin. On a terminal it
        // is ignored, as sshd does: closing a terminal's input hangs the
        // command up (`ssh -tt host cmd < /dev/null` would print nothing).
        match stdin {
            Some(mut w) if size.is_none() => {
                let _ = w.shutdown().await;
            }
            Some(w) => {
                let _keep_open = w;
                std::future::pending::<()>().await;
            }
            None => {}
        }
    };
    let resize = async {
        let Some(mut size) = size.clone() else { return };
        while size.changed().await.is_ok() {
            let (rows, cols) = *size.borrow_and_update();
            if let Err(e) = control.resize(rows, cols).await {
                tracing::debug!(error = %e, "exec resize");
            }
        }
    };
    let signal = async {
        while let Some(sig) = signals.recv().await {
            match control.signal(sig).await {
                Ok(()) => tracing::debug!(signal = %sig, "delivered an SSH signal"),
                Err(e) => {
                    tracing::info!(signal = %sig, error = %e, "could not deliver an SSH signal")
                }
            }
        }
    };
    tokio::join!(feed, resize, signal);
    std::future::pending::<()>().await;
}
