//! `devctl nodes [NAME]`, `devctl nodes cordon|uncordon|drain NODE`

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `nodes`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Show only this node.
    pub name: Option<String>,
    /// Change a node's scheduling.
    #[command(subcommand)]
    pub action: Option<Action>,
}

/// What to do to a node (admin only).
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Take no new containers on NODE (running ones stay).
    Cordon {
        /// Node name.
        node: String,
    },
    /// Let NODE take new containers again.
    Uncordon {
        /// Node name.
        node: String,
    },
    /// Cordon NODE and stop its containers; `devctl start` places them
    /// again on a node that allows it.
    Drain {
        /// Node name.
        node: String,
        /// Seconds each container gets after SIGTERM before SIGKILL.
        #[arg(long, short = 't')]
        timeout: Option<i32>,
    },
}

/// Lists nodes, shows one, or changes one.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let nodes = &mut client.nodes;
    match (args.action, args.name) {
        (Some(Action::Cordon { node }), _) => {
            let n = nodes
                .cordon_node(pb::CordonNodeRequest { name: node })
                .await?;
            output::node(format, &n.into_inner())
        }
        (Some(Action::Uncordon { node }), _) => {
            let n = nodes
                .uncordon_node(pb::UncordonNodeRequest { name: node })
                .await?;
            output::node(format, &n.into_inner())
        }
        (Some(Action::Drain { node, timeout }), _) => {
            let r = nodes
                .drain_node(pb::DrainNodeRequest {
                    name: node,
                    timeout_seconds: timeout,
                })
                .await?
                .into_inner();
            output::drained(format, &r)
        }
        (None, Some(name)) => {
            let n = nodes.get_node(pb::GetNodeRequest { name }).await?;
            output::node(format, &n.into_inner())
        }
        (None, None) => {
            let list = nodes.list_nodes(pb::ListNodesRequest {}).await?;
            output::nodes(format, &list.into_inner().nodes)
        }
    }
}
