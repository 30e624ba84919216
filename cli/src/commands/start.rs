//! `devctl start NAME`

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `start`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name.
    pub name: String,
}

/// Calls StartContainer and prints the container.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let c = client
        .containers
        .start_container(pb::StartContainerRequest { name: args.name })
        .await?
        .into_inner();
    output::container(format, &c)
}
