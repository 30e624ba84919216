//! `devctl events [-f] [--since 10m|RFC3339] [--from-seq N] [--container C]
//! [--node N]`

use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow};
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start at this time: a duration ago (10m, 2h) or an RFC 3339 time.
    #[arg(long, conflicts_with = "from_seq")]
    pub since: Option<String>,
    /// Start at this sequence number (shown with -o json).
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Only this container's events.
    #[arg(long)]
    pub container: Option<String>,
    /// Only this node's events.
    #[arg(long)]
    pub node: Option<String>,
}

/// `--since` as a time.
pub fn parse_since(s: &str) -> Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago: Duration = humantime::parse_duration(s).map_err(|_| {
        anyhow!(
            "--since {s:?}: use a duration (10m, 2h) or an RFC 3339 time (2026-11-22T10:00:00Z)"
        )
    })?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| anyhow!("--since {s:?}: that is too long ago; use a shorter duration"))
}

impl Args {
    /// The request these flags describe.
    pub fn to_request(&self) -> Result<pb::WatchEventsRequest> {
        Ok(pb::WatchEventsRequest {
            since_sequence: self.from_seq.unwrap_or(0),
            since_time: self
                .since
                .as_deref()
                .map(parse_since)
                .transpose()?
                .map(Into::into),
            container: self.container.clone().unwrap_or_default(),
            node: self.node.clone().unwrap_or_default(),
            follow: self.follow,
        })
    }
}

/// Prints events as they arrive.
pub async fn run(
    client: &mut Client,
    format: output::Format,
    request: pb::WatchEventsRequest,
) -> Result<()> {
    let mut stream = client.events.watch_events(request).await?.into_inner();
    let mut printer = output::EventPrinter::new(format);
    while let Some(event) = stream.message().await? {
        printer.print(&event)?;
    }
    Ok(())
}
