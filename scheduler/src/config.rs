//! The scheduler's command line: every flag also reads a `DEVCTL_*`
//! variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

/// devctl-scheduler: cluster state, placement and the public gRPC API of a
/// devctl cluster.
#[derive(Debug, Parser)]
#[command(name = "devctl-scheduler", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the cluster CA, the SSH CA, the server certificate and an
    /// admin client bundle.
    Init {
        /// Data directory.
        #[arg(long, env = "DEVCTL_DATA_DIR")]
        data_dir: PathBuf,
        /// Extra DNS name or IP address for the server certificate
        /// (repeatable). localhost, 127.0.0.1, ::1 and the hostname are
        /// always included.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace an existing CA and SSH CA (invalidates every issued
        /// certificate).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate bundle (ca.pem, cert.pem, key.pem).
    IssueCert {
        /// Data directory.
        #[arg(long, env = "DEVCTL_DATA_DIR")]
        data_dir: PathBuf,
        /// Identity name (a DNS label, e.g. alice or node-a).
        #[arg(long)]
        name: String,
        /// Role carried in the certificate.
        #[arg(long, value_parser = ["admin", "developer", "viewer", "agent"])]
        role: String,
        /// Directory to write the bundle to.
        #[arg(long)]
        out: PathBuf,
        /// Validity (default: 30d for agents, 7d for everyone else; renew
        /// with `devctl login --renew`, agents renew by themselves).
        #[arg(long, value_parser = humantime::parse_duration)]
        valid_for: Option<Duration>,
    },
    /// Serve the gRPC API (mutual TLS) and manage the cluster.
    Serve(Box<ServeArgs>),
    /// The graph projection.
    #[command(subcommand)]
    Graph(GraphCommand),
    /// Join tokens: one-time credentials that let an agent
    /// (`devctl-agent join`) or a person (`devctl login`) get a certificate
    /// without any key leaving their machine.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Revoke certificates at once: the next call with them is refused and
    /// their open streams are closed. NAME revokes every certificate of that
    /// identity issued so far (a new one can be issued afterwards); SERIAL
    /// (32 hex digits, as `devctl login` prints) revokes one.
    Revoke {
        /// Data directory.
        #[arg(long, env = "DEVCTL_DATA_DIR")]
        data_dir: PathBuf,
        /// An identity name or a certificate serial.
        target: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new one-time join token. It pins this cluster's CA, so the
    /// joining side authenticates the scheduler before sending it.
    Create {
        /// Data directory.
        #[arg(long, env = "DEVCTL_DATA_DIR")]
        data_dir: PathBuf,
        /// Role of the certificate the token buys.
        #[arg(long, value_parser = ["agent", "developer", "viewer", "admin"])]
        role: String,
        /// The identity's name (a node name for agents); without it the
        /// joining side chooses (`--node`, `--name`).
        #[arg(long)]
        name: Option<String>,
        /// How long the token can be used.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Flags of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory (run `init` first).
    #[arg(long, env = "DEVCTL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port, written to
    /// DIR/scheduler.addr.
    #[arg(long, env = "DEVCTL_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// NATS server URL (tls://HOST:PORT). TLS is always required; the
    /// scheduler presents DIR/bus/cert.pem and trusts only the cluster CA.
    #[arg(long, env = "DEVCTL_NATS_URL", default_value = "tls://127.0.0.1:4222")]
    pub nats: String,
    /// A node without a heartbeat for this long is down.
    #[arg(long, env = "DEVCTL_NODE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub node_timeout: Duration,
    /// How long an agent may take to execute a command.
    #[arg(long, env = "DEVCTL_COMMAND_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub command_timeout: Duration,
    /// Placement strategy when a create sets none.
    #[arg(long, env = "DEVCTL_PLACEMENT", default_value = "spread", value_parser = ["spread", "binpack"])]
    pub placement: String,
    /// Live memory use (percent) above which a node takes no new container.
    #[arg(long, env = "DEVCTL_MEMORY_THRESHOLD", default_value_t = 90.0)]
    pub memory_threshold: f64,
    /// CPUs a container without --cpus gets as its limit (and reserves):
    /// 0.5, 500m; 0: no limit.
    #[arg(long, env = "DEVCTL_DEFAULT_CPUS", default_value = "1", value_parser = parse_cpus_or_zero)]
    pub default_cpus: i64,
    /// Memory a container without --memory gets as its limit (and
    /// reserves): 512m, 4g; 0: no limit (a container may then use all of
    /// its host's memory).
    #[arg(long, env = "DEVCTL_DEFAULT_MEMORY", default_value = "2g", value_parser = parse_memory_or_zero)]
    pub default_memory: i64,
    /// How many times its CPUs a node's CPU reservations may add up to
    /// (1: no overcommit). CPU is shared in time, and dev containers are
    /// idle most of the day; memory is never overcommitted.
    #[arg(long, env = "DEVCTL_CPU_OVERCOMMIT", default_value_t = 4.0, value_parser = parse_overcommit)]
    pub cpu_overcommit: f64,
    /// Most CPUs placement counts for any node, whatever its agent claims;
    /// 0: no cap, and a node's first heartbeat bounds it instead (set this
    /// to let nodes grow).
    #[arg(long, env = "DEVCTL_MAX_NODE_CPUS", default_value = "0", value_parser = parse_cpus_or_zero)]
    pub max_node_cpus: i64,
    /// Most memory placement counts for any node (as --max-node-cpus).
    #[arg(long, env = "DEVCTL_MAX_NODE_MEMORY", default_value = "0", value_parser = parse_memory_or_zero)]
    pub max_node_memory: i64,
    /// Lease of a container created without --ttl ("0": no lease).
    #[arg(long, env = "DEVCTL_DEFAULT_TTL", default_value = "8h", value_parser = parse_duration_or_zero)]
    pub default_ttl: Duration,
    /// Longest lease a create or `devctl extend` may ask for.
    #[arg(long, env = "DEVCTL_MAX_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,
    /// Let creates ask for no lease at all (--ttl 0).
    #[arg(long, env = "DEVCTL_ALLOW_NO_TTL")]
    pub allow_no_ttl: bool,
    /// What happens when a lease runs out.
    #[arg(long, env = "DEVCTL_LEASE_EXPIRY", default_value = "stop", value_parser = ["stop", "remove"])]
    pub lease_expiry: String,
    /// Stop a running container unused for this long ("0": never).
    #[arg(long, env = "DEVCTL_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration_or_zero)]
    pub idle_timeout: Duration,
    /// What counts as use (comma-separated): exec sessions, port-forward and
    /// SSH sessions, CPU above --idle-cpu.
    #[arg(long, env = "DEVCTL_IDLE_SIGNALS", value_delimiter = ',', default_value = "exec,sessions,cpu", value_parser = ["exec", "sessions", "cpu"])]
    pub idle_signals: Vec<String>,
    /// CPU use (percent of one CPU) at or above which a container is in use.
    #[arg(long, env = "DEVCTL_IDLE_CPU", default_value_t = 5.0)]
    pub idle_cpu: f64,
    /// How often every node's containers are compared with the records.
    #[arg(long, env = "DEVCTL_RECONCILE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// How long a devctl container unknown to the scheduler stays on its
    /// node before it is removed.
    #[arg(long, env = "DEVCTL_ORPHAN_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub orphan_grace: Duration,
    /// Quota of a role: ROLE:containers=N,cpus=X,memory=SIZE,workspaces=N,
    /// workspace-size=SIZE (any subset; repeatable). Counts every container
    /// an identity owns, running or stopped, and every workspace it keeps
    /// (sizes as their nodes last measured them). Setting any role quota replaces the default one;
    /// `developer:` (nothing after the colon) means no quota.
    #[arg(long = "role-quota", env = "DEVCTL_ROLE_QUOTAS", value_delimiter = ';', value_parser = parse_role_quota, default_value = DEFAULT_ROLE_QUOTA)]
    pub role_quotas: Vec<(devctl_proto::identity::Role, crate::quota::Limits)>,
    /// Quota of one user, replacing their role's: NAME:containers=N,...
    /// (repeatable).
    #[arg(long = "user-quota", env = "DEVCTL_USER_QUOTAS", value_delimiter = ';', value_parser = parse_user_quota)]
    pub user_quotas: Vec<(String, crate::quota::Limits)>,
    /// Hold admins to their quotas too (by default they are exempt).
    #[arg(long, env = "DEVCTL_QUOTA_ADMINS")]
    pub quota_admins: bool,
    /// How long events are kept.
    #[arg(long, env = "DEVCTL_EVENT_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,
    /// How long audit log entries are kept.
    #[arg(long, env = "DEVCTL_AUDIT_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,
    /// Most space the audit log takes (512m, 1g; 0: no cap but its age):
    /// past it the oldest entries go first (with a warning in the log), so
    /// a flood of refused calls cannot fill the disk. JetStream reserves it
    /// at start, so it must fit in the store's free space.
    #[arg(long, env = "DEVCTL_AUDIT_MAX_SIZE", default_value = "256m", value_parser = parse_memory_or_zero)]
    pub audit_max_size: i64,
    /// Most space image archives pushed without a registry (`devctl images
    /// push`) take in the bus's object store (8g, 20g; 0: pushes off): the
    /// largest archive a push may send, and past it the oldest archives are
    /// deleted. JetStream reserves it at start, as the audit log's.
    #[arg(long, env = "DEVCTL_IMAGE_STORE_SIZE", default_value = "8g", value_parser = parse_memory_or_zero)]
    pub image_store_size: i64,
    /// API calls per second allowed to each identity on average (0.5, 50);
    /// 0: no limit. A call over it is RESOURCE_EXHAUSTED ("retry in N ms",
    /// and the `retry-after-ms` response metadata).
    #[arg(long, env = "DEVCTL_RATE_LIMIT", default_value_t = 50.0)]
    pub rate_limit: f64,
    /// API calls an identity may make in a burst, above --rate-limit; 0: no
    /// limit.
    #[arg(long, env = "DEVCTL_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
    /// Calls per second allowed on average to each source address (IP)
    /// that presents no usable credentials (Join, and calls refused as
    /// UNAUTHENTICATED); 0: no limit. A call over it is RESOURCE_EXHAUSTED
    /// with `retry-after-ms`, and is not recorded in the audit log.
    #[arg(long, env = "DEVCTL_ANONYMOUS_RATE_LIMIT", default_value_t = 10.0)]
    pub anonymous_rate_limit: f64,
    /// Such calls one source address may make in a burst; 0: no limit.
    #[arg(long, env = "DEVCTL_ANONYMOUS_RATE_BURST", default_value_t = 20)]
    pub anonymous_rate_burst: u32,
    /// Streams (logs -f, exec, events and stats watches, audit listings,
    /// SSH connections and forwarded port connections) one identity may have
    /// open at once; one more is RESOURCE_EXHAUSTED. 0: no cap.
    #[arg(long, env = "DEVCTL_MAX_STREAMS_PER_IDENTITY", default_value_t = 32)]
    pub max_streams_per_identity: usize,
    /// Validity of the agent certificates this scheduler signs (agents
    /// renew them before they run out).
    #[arg(long, env = "DEVCTL_AGENT_CERT_TTL", default_value = "30d", value_parser = humantime::parse_duration)]
    pub agent_cert_ttl: Duration,
    /// Validity of the user certificates this scheduler signs (renew with
    /// `devctl login --renew`).
    #[arg(long, env = "DEVCTL_USER_CERT_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub user_cert_ttl: Duration,
    /// Default and longest validity of the SSH user certificates this
    /// scheduler signs (`devctl ssh` and `devctl config-ssh` renew them):
    /// how long a key stays usable after its owner lost access.
    #[arg(long, env = "DEVCTL_SSH_CERT_TTL", default_value = "8h", value_parser = humantime::parse_duration)]
    pub ssh_cert_ttl: Duration,
    /// The largest image build context (`devctl images build`) a client may
    /// send, e.g. 256m; the whole context is held in memory while its
    /// nodes build.
    #[arg(long, env = "DEVCTL_MAX_BUILD_CONTEXT", default_value = "256m", value_parser = parse_memory_or_zero)]
    pub max_build_context: i64,
    #[command(flatten)]
    pub graph: GraphArgs,
}

/// Where the graph projection writes (`serve`, `graph resync`). The
/// password is read from a file or from DEVCTL_NEO4J_PASSWORD, never from
/// the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphArgs {
    /// The Bolt/Cypher server to project the cluster into, e.g.
    /// bolt://graph:7687 (Neo4j 4.4 or 5.x). Unset: no graph projection,
    /// and `devctl insights` answers how to enable it.
    #[arg(long, env = "DEVCTL_NEO4J_URI")]
    pub neo4j_uri: Option<String>,
    /// The graph server's user.
    #[arg(long, env = "DEVCTL_NEO4J_USER", default_value = "neo4j")]
    pub neo4j_user: String,
    /// A file holding the graph user's password (keep it 0600). Without
    /// it, the password is read from the environment variable
    /// DEVCTL_NEO4J_PASSWORD.
    #[arg(long, env = "DEVCTL_NEO4J_PASSWORD_FILE")]
    pub neo4j_password_file: Option<PathBuf>,
    /// The database to write (unset: the server's default).
    #[arg(long, env = "DEVCTL_NEO4J_DATABASE")]
    pub neo4j_database: Option<String>,
    /// How long one call to the graph server may take.
    #[arg(long, env = "DEVCTL_NEO4J_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub neo4j_timeout: Duration,
}

/// `devctl-scheduler graph …`.
#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Re-project the whole cluster into the graph (idempotent): every
    /// container and node of the store, and every event of the retained
    /// history. Run it while the scheduler is stopped (a running
    /// scheduler does the same on `devctl graph resync`).
    Resync {
        /// Data directory.
        #[arg(long, env = "DEVCTL_DATA_DIR")]
        data_dir: PathBuf,
        /// NATS URL.
        #[arg(long, env = "DEVCTL_NATS_URL", default_value = "tls://127.0.0.1:4222")]
        nats: String,
        /// The graph server.
        #[command(flatten)]
        graph: GraphArgs,
    },
}

/// The quota of a developer unless the cluster sets role quotas: room for
/// ten containers with the default limits, and for a few larger ones.
pub const DEFAULT_ROLE_QUOTA: &str = "developer:containers=10,cpus=16,memory=32g";

fn parse_overcommit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: use a number from 1 (no overcommit) to 100, e.g. 4"
        )),
    }
}

fn parse_role_quota(
    s: &str,
) -> Result<(devctl_proto::identity::Role, crate::quota::Limits), String> {
    let (role, limits) = s
        .split_once(':')
        .ok_or("use ROLE:containers=N,cpus=X,memory=SIZE")?;
    let role = role.parse().map_err(|e| format!("{e}"))?;
    Ok((role, limits.parse()?))
}

fn parse_user_quota(s: &str) -> Result<(String, crate::quota::Limits), String> {
    let (user, limits) = s
        .split_once(':')
        .ok_or("use NAME:containers=N,cpus=X,memory=SIZE")?;
    devctl_proto::validate::dns_label("user", user).map_err(|e| e.to_string())?;
    Ok((user.to_string(), limits.parse()?))
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s == "0" {
        Ok(Duration::ZERO)
    } else {
        humantime::parse_duration(s).map_err(|e| e.to_string())
    }
}

fn parse_cpus_or_zero(s: &str) -> Result<i64, String> {
    if s == "0" {
        Ok(0)
    } else {
        devctl_proto::units::parse_cpus(s)
    }
}

fn parse_memory_or_zero(s: &str) -> Result<i64, String> {
    devctl_proto::units::parse_memory(s)
}

impl GraphArgs {
    /// The graph configuration, if `--neo4j-uri` is set: the URI checked,
    /// the password read from `--neo4j-password-file` or
    /// DEVCTL_NEO4J_PASSWORD.
    pub fn config(&self) -> Result<Option<crate::graph::GraphConfig>, String> {
        let Some(uri) = self.neo4j_uri.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let scheme = uri.split_once("://").map(|(s, _)| s);
        if !matches!(
            scheme,
            Some("bolt" | "bolt+s" | "bolt+ssc" | "neo4j" | "neo4j+s" | "neo4j+ssc")
        ) {
            return Err(format!(
                "--neo4j-uri: {uri:?} is not a Bolt address; use bolt://HOST:7687"
            ));
        }
        // Bolt addresses carry no '@' but in credentials (user:password@).
        if uri.contains('@') {
            return Err(
                "--neo4j-uri: put no credentials in the URI (they would show in the process list); use --neo4j-user and --neo4j-password-file".into(),
            );
        }
        if self.neo4j_timeout.is_zero() {
            return Err("--neo4j-timeout must be longer than zero (e.g. 10s)".into());
        }
        let password = match &self.neo4j_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("--neo4j-password-file: cannot read {}: {e}", path.display())
                })?;
                warn_if_readable_by_others(path);
                text.trim_end_matches(['\r', '\n']).to_string()
            }
            None => std::env::var("DEVCTL_NEO4J_PASSWORD").map_err(|_| {
                "--neo4j-uri is set but no password: use --neo4j-password-file FILE or the environment variable DEVCTL_NEO4J_PASSWORD".to_string()
            })?,
        };
        if let Some(db) = &self.neo4j_database
            && (db.is_empty() || db.len() > 63)
        {
            return Err("--neo4j-database: use a database name of 1 to 63 characters".into());
        }
        Ok(Some(crate::graph::GraphConfig {
            uri: uri.to_string(),
            user: self.neo4j_user.clone(),
            password: crate::graph::Secret::new(password),
            database: self.neo4j_database.clone(),
            timeout: self.neo4j_timeout,
        }))
    }
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the graph password file is readable by other users; chmod 600 it");
    }
}
