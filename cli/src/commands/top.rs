//! `devctl top [--no-stream]`: the cluster at a glance.

use std::{io::IsTerminal, time::Duration};

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `top`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print once and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// How many of the busiest containers to show.
    #[arg(long, default_value_t = 10)]
    pub containers: usize,
}

/// Nodes with their usage and the busiest containers, refreshed every
/// second until interrupted.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let tty = std::io::stdout().is_terminal() && !args.no_stream;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let nodes = client
            .nodes
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        let mut stats = client
            .stats
            .get_stats(pb::GetStatsRequest::default())
            .await?
            .into_inner()
            .containers;
        stats.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
        stats.truncate(args.containers);
        output::top(format, &nodes, &stats, tty)?;
        if args.no_stream {
            return Ok(());
        }
    }
}
