//! `devctl create NAME --image IMG [--cpus 0.5] [--memory 512m] [--env K=V]…
//! [--label K=V]… [--node N] [--ttl 8h] [--health-cmd CMD] [-- COMMAND…]`

use devctl_proto::container::ContainerExt;
use std::{collections::HashMap, time::Duration};

use anyhow::{Result, anyhow};
use devctl_proto::{pb, validate};

use crate::{client::Client, output};
use devctl_proto::units;

/// Flags of `create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name (lowercase letters, digits and '-').
    pub name: String,
    /// Image; must be present on the node (nothing is pulled).
    #[arg(long)]
    pub image: String,
    /// CPU limit: 0.5, 2 or 500m.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory limit: 512m, 1g, 1.5g or bytes.
    #[arg(long, short = 'm')]
    pub memory: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Run on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Run only on a node with this label KEY=VALUE (repeatable).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement strategy (default: the cluster's).
    #[arg(long, value_parser = ["spread", "binpack"])]
    pub strategy: Option<String>,
    /// Only show where it would run; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// An id of your choosing that makes retrying this create safe: a retry
    /// with the same id returns the container instead of failing.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Lease: the container is stopped this long after it starts (8h, 30m;
    /// 0: no lease, where the cluster allows it). Default: the cluster's.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Health check command, run by `sh -c` in the container (as docker's
    /// --health-cmd); replaces the image's HEALTHCHECK.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 30s).
    #[arg(long, value_parser = humantime::parse_duration, requires = "health_cmd")]
    pub health_interval: Option<Duration>,
    /// Failures in a row that make the container unhealthy (default 3).
    #[arg(long, requires = "health_cmd", value_parser = clap::value_parser!(i32).range(1..))]
    pub health_retries: Option<i32>,
    /// Time one check may take (default 30s).
    #[arg(long, value_parser = humantime::parse_duration, requires = "health_cmd")]
    pub health_timeout: Option<Duration>,
    /// Time after start during which failures do not count.
    #[arg(long, value_parser = humantime::parse_duration, requires = "health_cmd")]
    pub health_start_period: Option<Duration>,
    /// When the node pulls the image: missing (default), always, or never
    /// (only nodes that already hold it are considered; see `devctl images
    /// push`).
    #[arg(long, value_parser = ["missing", "always", "never"])]
    pub pull: Option<String>,
    /// Command and arguments (after `--`); default: the image's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err("use at least 1s (or 0 for no lease)".into()),
        Err(e) => Err(format!("{e} (use e.g. 8h, 30m, or 0 for no lease)")),
    }
}

/// Whole seconds of a health setting, at least one.
fn health_secs(flag: &str, d: Option<Duration>) -> Result<i32> {
    match d {
        None => Ok(0),
        Some(d) if d.as_secs() >= 1 && d.as_secs() <= i32::MAX as u64 => Ok(d.as_secs() as i32),
        Some(_) => Err(anyhow!("{flag}: use at least 1s")),
    }
}

fn pairs(flag: &str, list: &[String]) -> Result<HashMap<String, String>> {
    list.iter()
        .map(|s| validate::key_value(flag, s).map_err(|e| anyhow!(e)))
        .collect()
}

impl Args {
    /// The request these flags describe; malformed flags are reported here,
    /// before anything is sent.
    pub fn to_request(&self) -> Result<pb::CreateContainerRequest> {
        let milli_cpus = match &self.cpus {
            Some(c) => units::parse_cpus(c).map_err(|e| anyhow!("--cpus: {e}"))?,
            None => 0,
        };
        let memory_bytes = match &self.memory {
            Some(m) => units::parse_memory(m).map_err(|e| anyhow!("--memory: {e}"))?,
            None => 0,
        };
        Ok(pb::CreateContainerRequest {
            container: Some(pb::Container {
                name: self.name.clone(),
                spec: Some(pb::ContainerSpec {
                    image: self.image.clone(),
                    command: self.command.clone(),
                    node: self.node.clone().unwrap_or_default(),
                    resources: Some(pb::Resources {
                        milli_cpus,
                        memory_bytes,
                    }),
                    env: pairs("--env", &self.env)?,
                    labels: pairs("--label", &self.labels)?,
                    constraints: pairs("--constraint", &self.constraints)?,
                    pull_policy: match self.pull.as_deref() {
                        Some("always") => pb::PullPolicy::Always as i32,
                        Some("never") => pb::PullPolicy::Never as i32,
                        Some(_) => pb::PullPolicy::Missing as i32,
                        None => 0,
                    },
                    ttl_seconds: self.ttl.map(|d| d.as_secs() as i64),
                    health_check: match &self.health_cmd {
                        None => None,
                        Some(cmd) if cmd.trim().is_empty() => {
                            return Err(anyhow!(
                                "--health-cmd: give a command, e.g. 'pg_isready -q'"
                            ));
                        }
                        Some(cmd) => Some(pb::HealthCheck {
                            command: vec!["sh".into(), "-c".into(), cmd.clone()],
                            interval_seconds: health_secs(
                                "--health-interval",
                                self.health_interval,
                            )?,
                            retries: self.health_retries.unwrap_or(0),
                            timeout_seconds: health_secs("--health-timeout", self.health_timeout)?,
                            start_period_seconds: health_secs(
                                "--health-start-period",
                                self.health_start_period,
                            )?,
                        }),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            dry_run: self.dry_run,
            request_id: self.request_id.clone().unwrap_or_default(),
            strategy: match self.strategy.as_deref() {
                Some("spread") => pb::PlacementStrategy::Spread,
                Some("binpack") => pb::PlacementStrategy::Binpack,
                _ => pb::PlacementStrategy::Unspecified,
            } as i32,
        })
    }
}

/// Creates the container and prints it once it runs.
pub async fn run(
    client: &mut Client,
    format: output::Format,
    request: pb::CreateContainerRequest,
) -> Result<()> {
    let dry_run = request.dry_run;
    let c = client
        .containers
        .create_container(request)
        .await?
        .into_inner();
    if dry_run && format == output::Format::Table {
        println!(
            "{} would run on node {} (dry run: nothing was created)",
            c.name,
            c.status().node
        );
        return Ok(());
    }
    output::container(format, &c)
}
