//! The settings of the container operations, the options of one create,
//! and the limits the operations apply (page sizes, smallest resources,
//! certificate lifetimes).

use std::time::Duration;

use super::LeasePolicy;
use crate::{activity::IdlePolicy, placement};

/// Settings of the container operations.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an agent may take for a command, on top of any stop timeout
    /// the command carries.
    pub command_timeout: Duration,
    /// Stop timeout when a request sets none.
    pub default_stop_timeout: i32,
    /// Placement strategy when a request sets none.
    pub strategy: placement::Strategy,
    /// Live memory use (percent) above which a node takes no new container.
    pub memory_threshold_percent: f64,
    /// How many times its CPUs a node's CPU reservations may add up to.
    pub cpu_overcommit: f64,
    /// CPU (thousandths) a container without a CPU limit gets (0: none).
    pub default_milli_cpus: i64,
    /// Memory a container without a memory limit gets (0: none).
    pub default_memory_bytes: i64,
    /// Lease lengths and what expiry does.
    pub leases: LeasePolicy,
    /// When unused containers are stopped.
    pub idle: IdlePolicy,
    /// How often every ready node's inventory is compared with the records.
    pub reconcile_interval: Duration,
    /// How long a devctl-labelled container the scheduler does not know is
    /// left on its node before it is removed.
    pub orphan_grace: Duration,
    /// Per-role and per-user quotas.
    pub quotas: crate::quota::Quotas,
    /// Default and longest validity of an SSH user certificate.
    pub ssh_cert_ttl: Duration,
    /// The largest image build context a client may send, in bytes.
    pub max_build_context: u64,
}

/// Options of one create.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Only decide the placement.
    pub dry_run: bool,
    /// Placement strategy; `None`: the cluster's.
    pub strategy: Option<placement::Strategy>,
    /// The client's id for this create (retries carry the same).
    pub request_id: Option<String>,
    /// The creator's role, for quotas (`None`: no quota applies).
    pub role: Option<devctl_proto::identity::Role>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(30),
            default_stop_timeout: 10,
            strategy: placement::Strategy::Spread,
            memory_threshold_percent: 90.0,
            cpu_overcommit: 1.0,
            default_milli_cpus: 0,
            default_memory_bytes: 0,
            leases: LeasePolicy::default(),
            idle: IdlePolicy::default(),
            reconcile_interval: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(300),
            quotas: crate::quota::Quotas::default(),
            ssh_cert_ttl: DEFAULT_SSH_CERT_TTL,
            max_build_context: super::build::DEFAULT_MAX_BUILD_CONTEXT,
        }
    }
}

/// Validity of SSH user certificates unless the cluster sets another
/// (`--ssh-cert-ttl`): a working day.
pub const DEFAULT_SSH_CERT_TTL: Duration = Duration::from_secs(8 * 3600);
/// Validity of an SSH host certificate: it is checked only at the handshake
/// of the one connection it was made for.
pub const HOST_CERT_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest OpenSSH public key line SignUserKey reads (an ed25519 line
/// is under 100 bytes, with a comment).
pub const MAX_PUBLIC_KEY_LEN: usize = 8 * 1024;

/// Page size when a request sets none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Encoded size after which a page ends (it may hold fewer containers than
/// asked for, with `next_page_token` set).
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Smallest memory limit the engine accepts.
pub const MIN_MEMORY_BYTES: i64 = 6 << 20;
/// Smallest CPU limit the engine accepts (0.01 CPU).
pub const MIN_MILLI_CPUS: i64 = 10;
