//! `devctl stats [NAME...] [--no-stream]`

use std::{collections::BTreeMap, io::IsTerminal, time::Duration};

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these containers.
    pub names: Vec<String>,
    /// Print the current samples once and exit.
    #[arg(long)]
    pub no_stream: bool,
}

/// Prints usage once, or live until interrupted: a table redrawn every
/// second (on a terminal), or one JSON object per sample with -o json.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    if args.no_stream {
        let got = client
            .stats
            .get_stats(pb::GetStatsRequest { names: args.names })
            .await?
            .into_inner();
        return output::container_stats(format, &got.containers, false);
    }
    let mut stream = client
        .stats
        .watch_stats(pb::WatchStatsRequest {
            names: args.names,
            nodes: false,
        })
        .await?
        .into_inner();
    let mut latest: BTreeMap<String, pb::ContainerStats> = BTreeMap::new();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let tty = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(update) = msg? else { return Ok(()) };
                if let Some(pb::stats_update::Sample::Container(c)) = update.sample {
                    if format == output::Format::Table {
                        latest.insert(c.name.clone(), c);
                    } else {
                        output::container_stats(format, std::slice::from_ref(&c), false)?;
                    }
                }
            }
            _ = redraw.tick(), if format == output::Format::Table => {
                let list: Vec<pb::ContainerStats> = latest.values().cloned().collect();
                output::container_stats(format, &list, tty)?;
            }
        }
    }
}
