//! TCP connections made inside a container's network namespace, so a
//! server bound to the container's own 127.0.0.1 is reached, and nothing
//! is reached that the container itself could not reach.
//!
//! A namespace is entered by one short-lived thread per connection: it
//! joins the namespace (`setns`, which changes only the calling thread),
//! connects, hands the socket back and exits. The socket stays in the
//! container's namespace; no other thread of the agent ever leaves the
//! host's. Needs CAP_SYS_ADMIN (the agent runs as root on its host).

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace, held open by its `/proc/PID/ns/net` file.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// The network namespace of process `pid`, from `proc_root` (the
    /// host's `/proc`).
    pub fn of_process(proc_root: &Path, pid: u32) -> io::Result<Self> {
        let file = File::open(proc_root.join(pid.to_string()).join("ns/net"))?;
        Ok(Self { file })
    }

    /// Connects to the first of `addrs` that accepts, from inside the
    /// namespace, each attempt within `timeout`. When none does, the error
    /// of the first.
    pub async fn connect(
        &self,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to connect to",
            ));
        }
        let file = self.file.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Not a blocking-pool thread: those are reused, and this one must
        // never run anything else once it has left the host's namespace.
        // It ends after at most one timeout per address; if the caller has
        // gone meanwhile, the socket is dropped with the answer.
        std::thread::Builder::new()
            .name("devctl-netns".into())
            .spawn(move || {
                let _ = tx.send(connect_in(file, &addrs, timeout));
            })?;
        let std_stream = rx
            .await
            .map_err(|_| io::Error::other("the connecting thread ended without an answer"))??;
        tokio::net::TcpStream::from_std(std_stream)
    }
}

/// On the calling thread: joins the namespace of `ns`, then connects.
fn connect_in(
    ns: File,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("entering the container's network namespace: {e}"),
        )
    })?;
    drop(ns);
    let mut first_error = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("at least one address was tried"))
}

/// Whether process `pid` (under `proc_root`) is in a cgroup whose path
/// names `container` (an engine container id): a PID the engine gave is
/// this host's only if so (an engine on another host has its own PIDs).
pub fn in_cgroup_of(proc_root: &Path, pid: u32, container: &str) -> bool {
    !container.is_empty()
        && std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
            .is_ok_and(|c| c.contains(container))
}

/// Where `host` port `port` is, seen from inside a container: `localhost`
/// is its loopback (IPv4, then IPv6), an IP literal is itself. Names are
/// not resolved (that would need the container's resolver configuration).
pub fn target_addrs(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match literal.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        Err(_) => Err(format!(
            "{host:?} is not an IP address or localhost: names are not resolved inside the container; use 127.0.0.1, localhost, ::1 or another IP address"
        )),
    }
}

/// Whether `host` means the container itself.
pub fn is_loopback(host: &str) -> bool {
    target_addrs(host, 0).is_ok_and(|a| a.iter().all(|a| a.ip().is_loopback()))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn hosts_are_localhost_or_ip_literals() {
        let port = 8080;
        assert_eq!(
            target_addrs("localhost", port).unwrap(),
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:8080".parse().unwrap()
            ]
        );
        assert_eq!(
            target_addrs("127.0.0.1", port).unwrap(),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            target_addrs("::1", port).unwrap(),
            vec!["[::1]:8080".parse().unwrap()]
        );
        assert_eq!(
            target_addrs("[::1]", port).unwrap(),
            vec!["[::1]:8080".parse().unwrap()]
        );
        assert_eq!(
            target_addrs("10.1.2.3", port).unwrap(),
            vec!["10.1.2.3:8080".parse().unwrap()]
        );
        let e = target_addrs("db.internal", port).unwrap_err();
        assert!(e.contains("not resolved"), "{e}");
        assert!(is_loopback("LOCALHOST"));
        assert!(is_loopback("127.0.0.1"));
        assert!(!is_loopback("10.1.2.3"));
    }

    /// The agent's own namespace stands in for a container's: setns into
    /// it is a no-op that still exercises the thread and the hand-over.
    fn own_namespace() -> Option<NetNs> {
        let ns = NetNs::of_process(Path::new("/proc"), std::process::id()).unwrap();
        // setns needs CAP_SYS_ADMIN; without it there is nothing to test.
        let probe = std::thread::spawn({
            let file = ns.file.try_clone().unwrap();
            move || nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        });
        match probe.join().unwrap() {
            Ok(()) => Some(ns),
            Err(e) => {
                eprintln!("skipped: setns into the own network namespace: {e}");
                None
            }
        }
    }

    #[tokio::test]
    async fn connects_inside_a_namespace_and_hands_back_a_working_socket() {
        let Some(ns) = own_namespace() else { return };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut s = ns
            .connect(target_addrs("localhost", port).unwrap(), CONNECT_TIMEOUT)
            .await
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused() {
        let Some(ns) = own_namespace() else { return };
        // A port that was just free.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = ns
            .connect(target_addrs("localhost", port).unwrap(), CONNECT_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn a_process_belongs_to_the_container_its_cgroup_names() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .filter_map(|l| l.rsplit(':').next())
            .max_by_key(|p| p.len())
            .unwrap();
        let pid = std::process::id();
        if path.len() > 1 {
            assert!(in_cgroup_of(Path::new("/proc"), pid, path));
        }
        assert!(!in_cgroup_of(
            Path::new("/proc"),
            pid,
            "0123456789abcdef-not-a-container"
        ));
        assert!(!in_cgroup_of(Path::new("/proc"), pid, ""));
        assert!(!in_cgroup_of(Path::new("/proc"), u32::MAX, "x"));
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_namespace() {
        let e = NetNs::of_process(Path::new("/proc"), u32::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
