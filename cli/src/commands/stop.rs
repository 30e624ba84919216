//! `devctl stop NAME [-t SECONDS]`

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `stop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name.
    pub name: String,
    /// Seconds to wait after SIGTERM before killing (default 10).
    #[arg(long = "time", short = 't')]
    pub timeout: Option<i32>,
}

/// Calls StopContainer and prints the container.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let c = client
        .containers
        .stop_container(pb::StopContainerRequest {
            name: args.name,
            timeout_seconds: args.timeout,
        })
        .await?
        .into_inner();
    output::container(format, &c)
}
