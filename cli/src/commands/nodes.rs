//! `devctl nodes [NAME]`

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `nodes`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show only this node.
    pub name: Option<String>,
}

/// Lists nodes, or shows one.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    match args.name {
        Some(name) => {
            let n = client
                .nodes
                .get_node(pb::GetNodeRequest { name })
                .await?
                .into_inner();
            output::node(format, &n)
        }
        None => {
            let list = client
                .nodes
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner();
            output::nodes(format, &list.nodes)
        }
    }
}
