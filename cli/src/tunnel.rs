//! A tunnel to a container (TunnelService.OpenTunnel): opened, then joined
//! to a local byte stream (stdin/stdout for `ssh --stdio`, a TCP
//! connection for `port-forward`) until both directions end.

use anyhow::{Context, Result, bail};
use devctl_proto::pb::{self, tunnel_request::Request, tunnel_response::Response};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Client;

/// The most one data message carries.
const CHUNK: usize = 64 * 1024;

/// An open tunnel.
#[derive(Debug)]
pub struct Tunnel {
    /// What the scheduler said when it opened.
    pub opened: pb::TunnelOpened,
    requests: mpsc::Sender<pb::TunnelRequest>,
    responses: Streaming<pb::TunnelResponse>,
}

/// Opens a tunnel as `open` says; fails with the scheduler's refusal.
pub async fn open(client: &mut Client, open: pb::TunnelOpen) -> Result<Tunnel> {
    // Two requests in flight at most: a reader faster than the tunnel
    // waits here (and in HTTP/2's flow control), never in a growing queue.
    let (requests, rx) = mpsc::channel(2);
    requests
        .send(pb::TunnelRequest {
            request: Some(Request::Open(open)),
        })
        .await
        .context("tunnel request queue")?;
    let mut responses = client
        .tunnel
        .open_tunnel(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match responses.message().await? {
        Some(pb::TunnelResponse {
            response: Some(Response::Opened(opened)),
        }) => Ok(Tunnel {
            opened,
            requests,
            responses,
        }),
        Some(other) => bail!("the scheduler answered a tunnel open with {other:?}"),
        None => bail!("the scheduler closed the tunnel before it opened"),
    }
}

impl Tunnel {
    /// Copies `reader` into the tunnel and the tunnel into `writer` until
    /// the tunnel ends (its far end closed, after `reader` reached its end
    /// or while it is still open), or either side fails.
    pub async fn join<R, W>(self, mut reader: R, mut writer: W) -> Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Tunnel {
            requests,
            mut responses,
            ..
        } = self;
        let up = async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = reader.read(&mut buf).await.context("reading local input")?;
                let request = if n == 0 {
                    Request::CloseWrite(true)
                } else {
                    Request::Data(buf[..n].to_vec())
                };
                let sent = requests
                    .send(pb::TunnelRequest {
                        request: Some(request),
                    })
                    .await;
                if sent.is_err() || n == 0 {
                    break;
                }
            }
            // Our end is sent (or the call is over): the tunnel ends with
            // the response stream. The sender is kept until then.
            std::future::pending::<Result<()>>().await
        };
        let down = async move {
            while let Some(r) = responses.message().await? {
                match r.response {
                    Some(Response::Data(d)) => {
                        writer.write_all(&d).await.context("writing local output")?;
                        writer.flush().await.context("writing local output")?;
                    }
                    Some(Response::CloseWrite(_)) => {
                        writer.shutdown().await.context("closing local output")?;
                    }
                    Some(Response::Opened(_)) | None => {}
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            r = up => r,
            r = down => r,
        }
    }
}
