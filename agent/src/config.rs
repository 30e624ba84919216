//! The agent's configuration: every flag also reads a `DEVCTL_*` variable.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use clap::Parser;
use devctl_proto::validate::{self, InvalidField};

/// devctl-agent: runs dev containers on this host's Docker engine, driven by
/// the scheduler over NATS. Dials out only; opens no port.
#[derive(Debug, Clone, Parser)]
#[command(name = "devctl-agent", version, about, long_about = None)]
pub struct Config {
    /// This node's name in the cluster (a DNS label, unique per cluster).
    #[arg(long, env = "DEVCTL_NODE")]
    pub node: String,

    /// NATS server URL (tls://HOST:PORT). TLS is always required.
    #[arg(long, env = "DEVCTL_NATS_URL", default_value = "tls://127.0.0.1:4222")]
    pub nats: String,

    /// The agent's directory: DIR/tls/{ca,cert,key}.pem is its bus
    /// certificate (CN = --node), from `devctl-scheduler issue-cert --role
    /// agent --name NODE --out DIR/tls`.
    #[arg(long, env = "DEVCTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Node label KEY=VALUE (repeatable; comma-separated in the variable).
    #[arg(long = "label", env = "DEVCTL_NODE_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,

    /// Docker engine URL (unix:///var/run/docker.sock, tcp://HOST:2375);
    /// default: DOCKER_HOST, then the local socket.
    #[arg(long, env = "DEVCTL_DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// How often to send a heartbeat.
    #[arg(long, env = "DEVCTL_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How often to report usage (node and containers).
    #[arg(long, env = "DEVCTL_STATS_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,

    /// Where container usage comes from: `auto` reads the cgroup files
    /// (v1 or v2) and asks the engine's stats API only for a container whose
    /// files cannot be read; `engine` always asks the engine (costly: a
    /// stream per container).
    #[arg(long, env = "DEVCTL_STATS_SOURCE", value_enum, default_value_t = StatsSource::Auto)]
    pub stats_source: StatsSource,

    /// The cgroup mount (for an agent in a container: the host's
    /// /sys/fs/cgroup mounted read-only, e.g. at /host/sys/fs/cgroup).
    #[arg(long, env = "DEVCTL_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,

    /// The host's /proc (network totals are read from a container process's
    /// namespace there; an agent in a container needs the host's PID
    /// namespace or the host's /proc mounted).
    #[arg(long, env = "DEVCTL_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Commands executed at once; further commands wait.
    #[arg(long, env = "DEVCTL_MAX_CONCURRENT_OPS", default_value_t = 32)]
    pub max_concurrent_ops: usize,

    /// Engine operations (create, start, stop, remove, inspect, opening an
    /// exec or logs) run at once; further ones wait their turn, in order.
    /// An engine sent many at once may hang (Docker 20.10 on
    /// fuse-overlayfs did with 100 removals).
    #[arg(long, env = "DEVCTL_MAX_ENGINE_OPS", default_value_t = 8)]
    pub max_engine_ops: usize,

    /// How long a created container must stay up before its create is
    /// answered: a command that exits at once is reported as stopped, with
    /// its exit code, not as running. 0: answer as soon as it started.
    #[arg(long, env = "DEVCTL_CREATE_SETTLE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub create_settle: Duration,

    /// Engine events waiting to be stored on the bus; beyond that they are
    /// dropped (the engine's event stream is never left unread) and the
    /// scheduler is asked to re-read this node's inventory.
    #[arg(long, env = "DEVCTL_EVENT_QUEUE", default_value_t = 4096)]
    pub event_queue: usize,

    /// Output kept per container: size of one log file (json-file engines).
    #[arg(long, env = "DEVCTL_LOG_MAX_SIZE", default_value = "64m")]
    pub log_max_size: String,

    /// Output kept per container: number of log files (json-file engines).
    #[arg(long, env = "DEVCTL_LOG_MAX_FILES", default_value_t = 3)]
    pub log_max_files: u32,

    /// Most processes one container may run (fork bombs stop there); 0: no
    /// limit.
    #[arg(long, env = "DEVCTL_PIDS_LIMIT", default_value_t = 4096)]
    pub pids_limit: i64,

    /// Let this node's containers gain privileges through setuid binaries
    /// such as sudo (as `docker run` does): their processes start without
    /// `no-new-privileges`. Capabilities stay the minimal set. Off by
    /// default: a container user becomes root inside it with sudo.
    #[arg(long, env = "DEVCTL_ALLOW_PRIVILEGE_ESCALATION")]
    pub allow_privilege_escalation: bool,

    /// A host path containers may bind-mount (spec.mounts), with what is
    /// below it (repeatable; comma-separated in the variable). Every other
    /// host path is refused. Default: none.
    #[arg(long = "allow-bind", env = "DEVCTL_ALLOW_BINDS", value_delimiter = ',')]
    pub allow_binds: Vec<std::path::PathBuf>,

    /// How often a workspace volume's size is measured again (a walk of its
    /// files, at the scheduler's inventory syncs).
    #[arg(long, env = "DEVCTL_WORKSPACE_MEASURE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub workspace_measure_interval: std::time::Duration,

    /// Test-only: report this share of the host's memory (percent) as used,
    /// instead of the measured figure, to exercise admission control.
    #[arg(long, hide = true, env = "DEVCTL_TEST_MEMORY_USED_PERCENT")]
    pub test_memory_used_percent: Option<f64>,

    /// Test-only: shift the times this agent puts on its stats reports by
    /// this many seconds (a skewed clock).
    #[arg(
        long,
        hide = true,
        env = "DEVCTL_TEST_CLOCK_SKEW_SECS",
        allow_negative_numbers = true
    )]
    pub test_clock_skew_secs: Option<i64>,

    /// How long shutdown waits for commands in flight.
    #[arg(long, env = "DEVCTL_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Where container usage comes from (`--stats-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsSource {
    /// The cgroup files; the engine for a container they do not show.
    Auto,
    /// The engine's stats API for every container.
    Engine,
}

impl Config {
    /// The directory of the agent's bus certificate: `DATA_DIR/tls`.
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join("tls"))
    }

    /// Checks the node name and parses the labels.
    pub fn validate(&self) -> Result<HashMap<String, String>, InvalidField> {
        validate::dns_label("--node", &self.node)?;
        if self.heartbeat_interval.is_zero() {
            return Err(InvalidField::new(
                "--heartbeat-interval",
                "must be more than zero (e.g. 1s)",
            ));
        }
        let size = self.log_max_size.trim_end_matches(['k', 'm', 'g']);
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || self.log_max_files == 0 {
            return Err(InvalidField::new(
                "--log-max-size/--log-max-files",
                "use a size such as 64m and at least one file",
            ));
        }
        if self.max_engine_ops == 0 {
            return Err(InvalidField::new(
                "--max-engine-ops",
                "must be at least 1 (e.g. 8)",
            ));
        }
        if self.pids_limit < 0 {
            return Err(InvalidField::new(
                "--pids-limit",
                "must not be negative (0: no limit)",
            ));
        }
        for p in &self.allow_binds {
            let clean = p.components().all(|c| {
                !matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            });
            if !p.is_absolute() || !clean || p == std::path::Path::new("/") {
                return Err(InvalidField::new(
                    "--allow-bind",
                    format!(
                        "{} is not an absolute host path such as /srv/shared (no \"..\", and not \"/\")",
                        p.display()
                    ),
                ));
            }
        }
        let mut labels = HashMap::new();
        for l in &self.labels {
            let (k, v) = validate::key_value("--label", l)?;
            validate::label_key("--label", &k)?;
            validate::label_value("--label", &k, &v)?;
            labels.insert(k, v);
        }
        Ok(labels)
    }
}
