//! A real image registry on loopback: Debian's `docker-registry`
//! (distribution) with htpasswd authentication, on a free 127.0.0.1 port
//! (the engine treats loopback registries as plain-HTTP "insecure" ones by
//! default), and `docker login/tag/push` into it with a private
//! `DOCKER_CONFIG`, so no credentials land in the machine's Docker config.
//! The registry is killed when [`TestRegistry`] is dropped.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{Proc, wait_until};

/// A running registry with one user.
#[derive(Debug)]
pub struct TestRegistry {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT`: the registry host of image references.
    pub host: String,
    /// The user name.
    pub username: String,
    /// Its password.
    pub password: String,
    dir: PathBuf,
}

impl TestRegistry {
    /// Starts a registry in `dir` (its config, htpasswd, storage, log and
    /// a private Docker config live there) with user `username`, password
    /// `password`.
    pub fn start(dir: &Path, username: &str, password: &str) -> Result<Self> {
        for tool in ["docker-registry", "htpasswd"] {
            ensure!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()?
                    .success(),
                "{tool} is missing: run deploy/test.sh (need_registry) or apt-get install docker-registry apache2-utils"
            );
        }
        fs::create_dir_all(dir.join("data"))?;
        fs::create_dir_all(dir.join("docker"))?;
        let htpasswd = dir.join("htpasswd");
        let out = Command::new("htpasswd")
            .arg("-Bbc")
            .arg(&htpasswd)
            .args([username, password])
            .output()?;
        ensure!(
            out.status.success(),
            "htpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // docker-registry cannot report a port it chose: take a free one.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: devctl-test\n    path: {htpasswd}\n",
                data = dir.join("data").display(),
                htpasswd = htpasswd.display(),
            ),
        )?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let mut proc = Proc::spawn("docker-registry", cmd, dir.join("registry.log"))?;
        wait_until("the registry listens", Duration::from_secs(15), || {
            assert!(proc.is_running(), "docker-registry exited: {}", proc.log());
            TcpStream::connect(&host).ok()
        });
        Ok(Self {
            proc,
            host,
            username: username.into(),
            password: password.into(),
            dir: dir.to_path_buf(),
        })
    }

    /// `docker` with this registry's private client config.
    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.dir.join("docker"));
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<String> {
        let out = cmd.output().with_context(|| what.to_string())?;
        ensure!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pushes local image `image` as `HOST/repo` (e.g. "dev/busybox:1"),
    /// then removes the local tag, so the engine has to pull it; the
    /// reference pushed.
    pub fn push(&self, image: &str, repo: &str) -> Result<String> {
        let reference = format!("{}/{repo}", self.host);
        let mut login = self.docker();
        login
            .args(["login", &self.host, "--username", &self.username])
            .arg("--password-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = login.spawn()?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("docker login stdin")?;
            stdin.write_all(self.password.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "docker login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tag = self.docker();
        tag.args(["tag", image, &reference]);
        self.run(tag, "docker tag")?;
        let mut push = self.docker();
        push.args(["push", &reference]);
        self.run(push, "docker push")?;
        self.untag(&reference)?;
        Ok(reference)
    }

    /// Removes the engine's tag `reference` (the image stays while other
    /// tags hold it).
    pub fn untag(&self, reference: &str) -> Result<()> {
        let mut rmi = self.docker();
        rmi.args(["image", "rm", reference]);
        self.run(rmi, "docker image rm")?;
        Ok(())
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// How many manifest requests for `repo` (e.g. "dev/busybox") the
    /// registry answered so far, from its access log.
    pub fn manifest_requests(&self, repo: &str) -> usize {
        let needle = format!("/v2/{repo}/manifests/");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("response completed"))
            .count()
    }
}

/// Whether the engine has image `reference`.
pub fn engine_has_image(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
