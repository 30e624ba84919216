//! [`TestCluster`]: nats-server, the scheduler and agents, and the CLI run
//! against them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::Result;
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    IMAGE, Nats, Proc, bin, docker_inspect_by_label, ensure_prerequisites, init_data_dir,
    issue_cert_into, remove_by_label, remove_networks_by_label, remove_volumes_by_label,
    wait_until,
};

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
    pub fn from(out: Output) -> Self {
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

    /// Waits until node `name` has `state` (`ready`, `down`: the
    /// NodeState value without its prefix, as `devctl nodes` shows it).
    pub fn wait_node_state(&self, name: &str, state: &str) {
        let want = format!("NODE_STATE_{}", state.to_uppercase());
        wait_until(
            &format!("node {name} {state}"),
            Duration::from_secs(30),
            || {
                let r = self.devctl(&["nodes", name, "-o", "json"]);
                let n: Value = serde_json::from_str(&r.stdout).ok()?;
                (n["state"] == want.as_str()).then_some(())
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
                        .any(|n| n["name"] == **name && n["state"] == "NODE_STATE_READY")
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
            remove_volumes_by_label(&format!("io.devctl.node={node}"));
        }
    }
}
