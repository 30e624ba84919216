//! devctl's shared contract.
//!
//! - [`pb`]: the generated `devctl.v1` API (gRPC services and messages, bus
//!   messages), and its descriptor set for server reflection.
//! - [`container`]: [`container::ContainerExt`], a container's spec and
//!   status without unwrapping.
//! - [`bus`]: NATS subject names and encoding helpers for the scheduler ↔
//!   agent bus.
//! - [`enroll`]: join tokens, and how a joining machine learns the CA it
//!   pins.
//! - [`json`]: the API's messages as canonical proto JSON (`-o json`).
//! - [`identity`]: who a caller is, read from its client certificate.
//! - [`pipe`]: one direction of a tunnel over the bus (flow-controlled
//!   byte stream), shared by the scheduler's and the agent's bus modules.
//! - [`pki`]: the cluster CA: creating it, issuing certificates, writing and
//!   loading three-file bundles, and building TLS configurations.
//! - [`validate`]: name and label rules shared by every binary.
//! - [`labels`]: the engine labels devctl puts on the containers it manages.
//! - [`units`]: sizes and CPU quantities as people write them (512m, 0.5).
//! - [`keyed`]: per-key async locks (one operation per container at a time).
//! - [`ssh`]: the SSH CA, user and host certificates, and their checks.
//! - [`process`]: logging set-up and the shutdown signal of every binary.
//! - [`registry`]: registry hosts of image references; no password in Debug.

pub mod archive;
pub mod bus;
pub mod container;
pub mod enroll;
pub mod identity;
pub mod json;
pub mod keyed;
pub mod labels;
pub mod pipe;
pub mod pki;
pub mod process;
pub mod registry;
pub mod ssh;
pub mod units;
pub mod validate;
pub mod words;

/// The generated `devctl.v1` package.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("devctl.v1");

    /// Encoded `FileDescriptorSet` of the devctl.v1 package, for gRPC server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("devctl_descriptor");
}

/// Version of this release line, reported by agents and the scheduler.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
