//! devctl-scheduler: holds cluster state, places containers and serves the
//! public gRPC API.
//!
//! - [`config`]: the command line.
//! - [`datadir`]: the data directory; `init` and `issue-cert`.
//! - [`server`]: `serve`: wiring and shutdown.
//! - [`api`]: the gRPC services (decode, authorize, call, encode).
//! - [`audit`]: the audit log's recording layer around every call.
//! - [`cluster`]: the operations on containers and nodes.
//! - [`placement`]: pure placement decisions.
//! - [`events`]: what engine events mean (pure).
//! - [`event_workers`]: the engine-event loop (per node and container shard).
//! - [`nodes`]: the node registry (heartbeats, liveness).
//! - [`stats`]: the latest usage samples (memory only).
//! - [`store`]: the embedded store; nothing else touches its file.
//! - [`feed`]: the change feed of every committed record change.
//! - [`graph`]: the Neo4j graph projection and its analytics (neo4rs).
//! - [`revocation`]: revoked certificates (`revoke`, checked on every call).
//! - [`tokens`]: API tokens (bearer credentials).
//! - [`bus`]: the only module that speaks NATS.
//! - [`ratelimit`]: per-identity token buckets (pure, plus a shared handle).
//!
//! ```text
//! CLI --gRPC/mTLS--> api --> cluster --> placement (pure)
//!                              |  \----> store (redb)
//!                              \-------> bus --NATS--> agent
//! ```

pub mod activity;
pub mod api;
pub(crate) mod audit;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod datadir;
pub mod event_workers;
pub mod events;
pub mod feed;
pub mod graph;
pub mod nodes;
pub mod placement;
pub mod quota;
pub mod ratelimit;
pub mod revocation;
pub mod server;
pub mod stats;
pub mod store;
pub mod tokens;
