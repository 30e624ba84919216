//! `devctl ls [--node N] [--owner O]`

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `ls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only containers on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only containers of this owner.
    #[arg(long)]
    pub owner: Option<String>,
}

/// Lists every matching container, following pages.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .containers
            .list_containers(pb::ListContainersRequest {
                page_size: 500,
                page_token,
                node: args.node.clone().unwrap_or_default(),
                owner: args.owner.clone().unwrap_or_default(),
            })
            .await?
            .into_inner();
        all.extend(page.containers);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    output::containers(format, &all)
}
