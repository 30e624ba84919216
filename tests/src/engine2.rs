//! [`SecondEngine`]: a second, real Docker engine beside the machine's own,
//! so two nodes of a test differ in images, containers and volumes as two
//! hosts would.
//!
//! Each engine gets a directory of its own (data root, exec root, socket),
//! a bridge of its own with a subnet of its own (`10.213.N.0/24`, and
//! `10.214.N.0/24` for the networks it creates), so tests can run several
//! at once. It never manages iptables and is never started with
//! `--bridge none` (which deletes the main engine's `docker0`).
//!
//! The bridge's name (`devctl2-N`) is the lock on `N` across test processes:
//! `ip link add` succeeds for one of them only. A bridge whose owner (its
//! alias, `pid=PID`) is gone is taken over.
//!
//! Drop removes its containers, stops dockerd (SIGTERM, then SIGKILL), ends
//! any containerd or shim left behind, unmounts what stays mounted below its
//! directory, deletes the bridge and the directory.
//!
//! ```no_run
//! use devctl_tests::{IMAGE, SecondEngine, TestCluster};
//! let engine = SecondEngine::start_seeded(&[IMAGE]); // declared first: dropped last
//! let mut cluster = TestCluster::start(&["a"]);
//! cluster.add_node_on("b", &engine, &[]).unwrap();
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::{Proc, TestCluster};

/// Storage drivers tried in order (`DEVCTL_ENGINE2_STORAGE_DRIVER` first if
/// set): overlay2 works on a plain ext4 /tmp and is the faster; inside a
/// container whose root is itself an overlay, only fuse-overlayfs does.
const STORAGE_DRIVERS: [&str; 2] = ["overlay2", "fuse-overlayfs"];

/// A second dockerd, its bridge and its directories; all removed on drop.
#[derive(Debug)]
pub struct SecondEngine {
    dockerd: Option<Proc>,
    bridge: String,
    subnet: String,
    driver: String,
    host: String,
    // Last: removed after everything above is gone.
    dir: TempDir,
}

impl SecondEngine {
    /// Starts an engine with no images.
    pub fn start() -> Self {
        Self::try_start().expect("a second Docker engine starts")
    }

    /// Starts an engine holding `images`, copied from the main engine
    /// (`docker save | docker load`).
    pub fn start_seeded(images: &[&str]) -> Self {
        let engine = Self::start();
        for image in images {
            engine
                .load_from_main(image)
                .unwrap_or_else(|e| panic!("seeding the second engine with {image}: {e:#}"));
        }
        engine
    }

    /// As [`SecondEngine::start`], returning the failure.
    pub fn try_start() -> Result<Self> {
        // /tmp, not a possibly long TMPDIR: unix socket paths (ours and
        // containerd's below the exec root) must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("devctl-e2-")
            .tempdir_in("/tmp")?;
        let (bridge, n) = claim_bridge()?;
        let mut engine = Self {
            dockerd: None,
            bridge,
            subnet: format!("10.213.{n}.0/24"),
            driver: String::new(),
            host: format!("unix://{}", dir.path().join("docker.sock").display()),
            dir,
        };
        let gateway = format!("10.213.{n}.1/24");
        ip(&["addr", "add", &gateway, "dev", &engine.bridge])?;
        ip(&["link", "set", &engine.bridge, "up"])?;
        let config = engine.dir.path().join("daemon.json");
        let pools = serde_json::json!({
            // The networks this engine creates get subnets no other engine
            // of a test uses (the default pools would collide with the
            // main engine's on the host's routes).
            "default-address-pools": [{"base": format!("10.214.{n}.0/24"), "size": 28}],
            // A container ignoring SIGTERM must not hold a test's end up.
            "shutdown-timeout": 1,
        });
        fs::write(&config, pools.to_string())?;

        let mut drivers: Vec<String> = std::env::var("DEVCTL_ENGINE2_STORAGE_DRIVER")
            .into_iter()
            .collect();
        drivers.extend(STORAGE_DRIVERS.iter().map(|d| d.to_string()));
        drivers.dedup();
        let mut failures = Vec::new();
        for (attempt, driver) in drivers.iter().enumerate() {
            match engine.start_dockerd(driver, attempt) {
                Ok(()) => {
                    engine.driver = driver.clone();
                    return Ok(engine);
                }
                Err(e) => failures.push(format!("{driver}: {e:#}")),
            }
        }
        bail!(
            "no storage driver worked for a second dockerd:\n{}",
            failures.join("\n")
        )
    }

    fn start_dockerd(&mut self, driver: &str, attempt: usize) -> Result<()> {
        let d = self.dir.path();
        // A fresh data root per attempt: a failed driver leaves its marks.
        let data = d.join(format!("data-{attempt}"));
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["-H", &self.host])
            .args(["--storage-driver", driver])
            .args(["--bridge", &self.bridge])
            .args(["--iptables=false", "--ip-masq=false"])
            .arg("--config-file")
            .arg(d.join("daemon.json"));
        let mut proc = Proc::spawn(
            &format!("dockerd {}", self.bridge),
            cmd,
            d.join(format!("dockerd-{attempt}.log")),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                self.dockerd = Some(proc);
                return Ok(());
            }
            if !proc.is_running() {
                let log = proc.log();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                drop(proc);
                unmount_below(&data);
                bail!("dockerd exited: {}", tail.join(" | "));
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 30s: {}", proc.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The engine's address for `--docker-host` / `DOCKER_HOST`
    /// (`unix:///tmp/devctl-e2-…/docker.sock`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The bridge its containers attach to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's subnet (`10.213.N.0/24`).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The storage driver in use (`overlay2` or `fuse-overlayfs`).
    pub fn storage_driver(&self) -> &str {
        &self.driver
    }

    /// A `docker` command aimed at this engine, not yet run.
    pub fn docker_command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env_remove("DOCKER_CONTEXT")
            .env("DOCKER_HOST", &self.host);
        cmd
    }

    /// Runs `docker ARGS` against this engine; its stdout, or the failure
    /// with stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self.docker_command().args(args).output()?;
        if !out.status.success() {
            return Err(anyhow!(
                "docker {} (second engine): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Copies `image` from the main engine: `docker save IMAGE | docker
    /// load`, streamed (never all in memory).
    pub fn load_from_main(&self, image: &str) -> Result<()> {
        let mut save = Command::new("docker")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("docker save")?;
        let stdout = save.stdout.take().expect("piped");
        let load = self
            .docker_command()
            .args(["load", "-q"])
            .stdin(stdout)
            .output()
            .context("docker load")?;
        let saved = save.wait_with_output()?;
        if !saved.status.success() {
            bail!(
                "docker save {image}: {}",
                String::from_utf8_lossy(&saved.stderr).trim()
            );
        }
        if !load.status.success() {
            bail!(
                "docker load (second engine): {}",
                String::from_utf8_lossy(&load.stderr).trim()
            );
        }
        Ok(())
    }

    /// Loads a `docker save` tarball from `file` into this engine.
    pub fn load_file(&self, file: &Path) -> Result<()> {
        let input = fs::File::open(file)?;
        let out = self
            .docker_command()
            .args(["load", "-q"])
            .stdin(input)
            .output()?;
        if !out.status.success() {
            bail!(
                "docker load: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Whether the engine holds `image` (a reference or an id).
    pub fn has_image(&self, image: &str) -> bool {
        self.docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .is_ok()
    }

    /// `docker inspect` of every container (running or not) with `label`.
    pub fn inspect_by_label(&self, label: &str) -> Vec<Value> {
        let ids = self
            .docker(&["ps", "-aq", "--filter", &format!("label={label}")])
            .expect("docker ps (second engine)");
        let mut out = Vec::new();
        for id in ids.split_whitespace() {
            match self.docker(&["inspect", id]) {
                Ok(json) => {
                    out.extend(serde_json::from_str::<Vec<Value>>(&json).expect("inspect JSON"))
                }
                Err(e) if e.to_string().contains("No such") => {}
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// Removes every container, eight at a time (see
    /// [`crate::remove_by_label`] for why not all at once).
    pub fn remove_all_containers(&self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            for batch in ids.chunks(8) {
                let mut args = vec!["rm", "-f"];
                args.extend(batch);
                let _ = self.docker(&args);
            }
        }
    }

    /// What dockerd has logged so far.
    pub fn log(&self) -> String {
        self.dockerd.as_ref().map(Proc::log).unwrap_or_default()
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            self.remove_all_containers();
            dockerd.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while dockerd.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Dropping kills it (SIGKILL) if it still runs.
        }
        kill_processes_mentioning(self.dir.path());
        unmount_below(self.dir.path());
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl TestCluster {
    /// Starts an agent for node `<prefix>-<short>` on `engine` (as
    /// [`TestCluster::start_agent`], with `--docker-host`).
    pub fn start_agent_on(
        &mut self,
        short: &str,
        engine: &SecondEngine,
        args: &[&str],
    ) -> Result<()> {
        let mut all = vec!["--docker-host", engine.host()];
        all.extend_from_slice(args);
        self.start_agent(short, &all)
    }

    /// Adds node `<prefix>-<short>` whose agent runs on `engine`, and waits
    /// until it is ready.
    pub fn add_node_on(&mut self, short: &str, engine: &SecondEngine, args: &[&str]) -> Result<()> {
        self.start_agent_on(short, engine, args)?;
        self.wait_nodes_ready(&[self.node(short)]);
        Ok(())
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Claims a free `devctl2-N` bridge (N in 1..=254) and returns its name and
/// N. The kernel's `ip link add` is the lock; the alias names the owner.
fn claim_bridge() -> Result<(String, u32)> {
    let me = std::process::id();
    let start = (uuid::Uuid::new_v4().as_u128() % 254) as u32;
    for i in 0..254 {
        let n = (start + i) % 254 + 1;
        let name = format!("devctl2-{n}");
        if ip(&["link", "add", &name, "type", "bridge"]).is_ok() {
            ip(&["link", "set", "dev", &name, "alias", &format!("pid={me}")])?;
            return Ok((name, n));
        }
        if owner_is_gone(&name) && ip(&["link", "del", &name]).is_ok() {
            // Taken over from a test process that died without its Drop;
            // claimed on the next round like any free one.
            if ip(&["link", "add", &name, "type", "bridge"]).is_ok() {
                ip(&["link", "set", "dev", &name, "alias", &format!("pid={me}")])?;
                return Ok((name, n));
            }
        }
    }
    bail!("no free devctl2-N bridge (1..=254 are all taken)")
}

/// Whether bridge `name`'s owner (alias `pid=PID`) no longer runs. A bridge
/// without the alias yet is being claimed: not gone.
fn owner_is_gone(name: &str) -> bool {
    let alias = fs::read_to_string(format!("/sys/class/net/{name}/ifalias")).unwrap_or_default();
    let Some(pid) = alias.trim().strip_prefix("pid=") else {
        return false;
    };
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Lazily unmounts everything still mounted at or below `dir`.
fn unmount_below(dir: &Path) {
    for m in mounts_below(dir) {
        let _ = Command::new("umount").arg("-l").arg(&m).output();
    }
}

/// SIGKILLs every process whose command line names `dir`: a containerd or
/// shim of this engine outliving its dockerd (only this engine's processes
/// name its private directory).
fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
