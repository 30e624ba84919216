//! `devctl logs NAME [-f] [--tail N] [--since 10m|RFC3339] [--timestamps]`

use std::io::Write;

use anyhow::Result;
use devctl_proto::pb;

use crate::client::Client;

/// Flags of `logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name.
    pub name: String,
    /// Keep printing new output until the container stops (or Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, short = 'n')]
    pub tail: Option<u32>,
    /// Only output since: a duration ago (10m) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Prefix each line with its time.
    #[arg(long, short = 't')]
    pub timestamps: bool,
}

impl Args {
    /// The request these flags describe.
    pub fn to_request(&self) -> Result<pb::StreamLogsRequest> {
        Ok(pb::StreamLogsRequest {
            name: self.name.clone(),
            follow: self.follow,
            tail: self.tail.map(|n| n.min(i32::MAX as u32) as i32),
            since: self
                .since
                .as_deref()
                .map(super::events::parse_since)
                .transpose()?
                .map(Into::into),
            timestamps: self.timestamps,
        })
    }
}

/// Copies the container's stdout to ours and its stderr to ours.
pub async fn run(client: &mut Client, request: pb::StreamLogsRequest) -> Result<()> {
    let mut stream = client.logs.stream_logs(request).await?.into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(chunk) = stream.message().await? {
        match chunk.stream() {
            pb::OutputStream::Stderr => {
                err.write_all(&chunk.data)?;
                err.flush()?;
            }
            _ => {
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
