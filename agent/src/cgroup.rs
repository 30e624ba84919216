//! Container usage read from the kernel's cgroup files, as cAdvisor and the
//! kubelet do, instead of the engine's stats API (which costs the engine a
//! stream per container).
//!
//! - cgroup v1 (one hierarchy per controller): `cpuacct.usage`,
//!   `memory.usage_in_bytes` minus `total_inactive_file`,
//!   `memory.limit_in_bytes`, `blkio.throttle.io_service_bytes_recursive`,
//!   `pids.current`.
//! - cgroup v2 (one unified hierarchy): `cpu.stat` `usage_usec`,
//!   `memory.current` minus `inactive_file`, `memory.max`, `io.stat`,
//!   `pids.current`.
//! - Network totals come from the container's network namespace:
//!   `PROC/<pid>/net/dev` of a process listed in the cgroup (loopback left
//!   out, as the engine does).
//!
//! A container's cgroup is found by its engine id under the places Docker
//! puts it: `docker/<id>` (cgroupfs driver) and
//! `system.slice/docker-<id>.scope` (systemd driver). A container under a
//! custom `--cgroup-parent` is not found; the caller then falls back to the
//! engine.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Above this a v1 memory limit means "none" (the kernel writes
/// `PAGE_COUNTER_MAX` pages, 9223372036854771712 bytes on 4 KiB pages).
const V1_NO_LIMIT: u64 = 1 << 62;

/// The cgroup hierarchy of this host.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    proc_root: PathBuf,
    version: Version,
}

/// Which cgroup hierarchy a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (`ROOT/cpuacct`, `ROOT/memory`, …).
    V1,
    /// The unified hierarchy (`ROOT/cgroup.controllers` exists).
    V2,
}

/// Where one container's cgroup files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Per-controller directories (v1); the optional ones may be missing.
    V1 {
        /// `cpuacct` (or `cpu,cpuacct`) directory.
        cpuacct: PathBuf,
        /// `memory` directory.
        memory: PathBuf,
        /// `blkio` directory.
        blkio: Option<PathBuf>,
        /// `pids` directory.
        pids: Option<PathBuf>,
    },
    /// The container's one directory (v2).
    V2(PathBuf),
}

/// Raw figures read from a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, reclaimable page cache (inactive file pages)
    /// excluded.
    pub memory_bytes: u64,
    /// The memory limit, if the container has one.
    pub memory_limit_bytes: Option<u64>,
    /// Bytes read from and written to block devices.
    pub block_read_bytes: u64,
    /// See `block_read_bytes`.
    pub block_write_bytes: u64,
    /// Processes (tasks) in the container.
    pub pids: u64,
    /// Network bytes received and sent (0 when the namespace could not be
    /// read).
    pub network_rx_bytes: u64,
    /// See `network_rx_bytes`.
    pub network_tx_bytes: u64,
}

impl Cgroups {
    /// The hierarchy mounted at `root` (usually `/sys/fs/cgroup`); processes
    /// are looked up under `proc_root` (usually `/proc`).
    pub fn detect(root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let version = if root.join("cgroup.controllers").is_file() {
            Version::V2
        } else {
            Version::V1
        };
        Self {
            root,
            proc_root: proc_root.into(),
            version,
        }
    }

    /// The hierarchy found.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The mount point read.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup of the container with engine id `engine_id`, if its files
    /// are where Docker's cgroupfs or systemd driver puts them.
    pub fn locate(&self, engine_id: &str) -> Option<Location> {
        // An id is hex; anything else must not walk the tree.
        if engine_id.is_empty() || !engine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let candidates = [
            format!("docker/{engine_id}"),
            format!("system.slice/docker-{engine_id}.scope"),
        ];
        match self.version {
            Version::V2 => candidates
                .iter()
                .map(|c| self.root.join(c))
                .find(|d| d.join("cpu.stat").is_file())
                .map(Location::V2),
            Version::V1 => {
                let controller = |names: &[&str], file: &str| {
                    names.iter().find_map(|n| {
                        candidates
                            .iter()
                            .map(|c| self.root.join(n).join(c))
                            .find(|d| d.join(file).is_file())
                    })
                };
                Some(Location::V1 {
                    cpuacct: controller(
                        &["cpuacct", "cpu,cpuacct", "cpuacct,cpu"],
                        "cpuacct.usage",
                    )?,
                    memory: controller(&["memory"], "memory.usage_in_bytes")?,
                    blkio: controller(&["blkio"], "blkio.throttle.io_service_bytes_recursive"),
                    pids: controller(&["pids"], "pids.current"),
                })
            }
        }
    }

    /// Reads the container's figures. Fails when a required file (CPU,
    /// memory) cannot be read: the container stopped, or the files are not
    /// readable here.
    pub fn read(&self, at: &Location) -> io::Result<Usage> {
        let mut u = match at {
            Location::V1 {
                cpuacct,
                memory,
                blkio,
                pids,
            } => {
                let stat = read(&memory.join("memory.stat"))?;
                let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
                let limit = number(&read(&memory.join("memory.limit_in_bytes"))?)?;
                let (block_read_bytes, block_write_bytes) = blkio
                    .as_ref()
                    .and_then(|d| {
                        fs::read_to_string(d.join("blkio.throttle.io_service_bytes_recursive")).ok()
                    })
                    .map(|s| v1_blkio(&s))
                    .unwrap_or_default();
                Usage {
                    cpu_ns: number(&read(&cpuacct.join("cpuacct.usage"))?)?,
                    memory_bytes: number(&read(&memory.join("memory.usage_in_bytes"))?)?
                        .saturating_sub(inactive),
                    memory_limit_bytes: (limit < V1_NO_LIMIT).then_some(limit),
                    block_read_bytes,
                    block_write_bytes,
                    pids: pids
                        .as_ref()
                        .and_then(|d| fs::read_to_string(d.join("pids.current")).ok())
                        .and_then(|s| number(&s).ok())
                        .unwrap_or(0),
                    ..Usage::default()
                }
            }
            Location::V2(dir) => {
                let cpu = read(&dir.join("cpu.stat"))?;
                let usage_usec = stat_value(&cpu, "usage_usec")
                    .ok_or_else(|| invalid("cpu.stat without usage_usec"))?;
                let stat = read(&dir.join("memory.stat"))?;
                let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
                let max = read(&dir.join("memory.max"))?;
                let (block_read_bytes, block_write_bytes) = fs::read_to_string(dir.join("io.stat"))
                    .map(|s| v2_io(&s))
                    .unwrap_or_default();
                Usage {
                    cpu_ns: usage_usec.saturating_mul(1000),
                    memory_bytes: number(&read(&dir.join("memory.current"))?)?
                        .saturating_sub(inactive),
                    memory_limit_bytes: match max.trim() {
                        "max" => None,
                        m => Some(number(m)?),
                    },
                    block_read_bytes,
                    block_write_bytes,
                    pids: fs::read_to_string(dir.join("pids.current"))
                        .ok()
                        .and_then(|s| number(&s).ok())
                        .unwrap_or(0),
                    ..Usage::default()
                }
            }
        };
        if let Some((rx, tx)) = self.network(at) {
            u.network_rx_bytes = rx;
            u.network_tx_bytes = tx;
        }
        Ok(u)
    }

    /// Network totals of the namespace of the cgroup's first process.
    fn network(&self, at: &Location) -> Option<(u64, u64)> {
        let procs = match at {
            Location::V1 { memory, .. } => memory.join("cgroup.procs"),
            Location::V2(dir) => dir.join("cgroup.procs"),
        };
        let procs = fs::read_to_string(procs).ok()?;
        // A process outside our PID namespace reads as 0.
        let pid = procs
            .lines()
            .map(str::trim)
            .find(|p| !p.is_empty() && *p != "0")?;
        let dev = fs::read_to_string(self.proc_root.join(pid).join("net/dev")).ok()?;
        Some(net_dev(&dev))
    }
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn number(s: &str) -> io::Result<u64> {
    s.trim()
        .parse()
        .map_err(|_| invalid(&format!("not a number: {:?}", s.trim())))
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`):
/// lines of `key value`.
fn stat_value(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Read and write totals of v1 `blkio.*io_service_bytes*`: lines of
/// `MAJ:MIN Op bytes`, plus a `Total` line.
fn v1_blkio(s: &str) -> (u64, u64) {
    read_write(
        s.lines().filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            Some((f.next()?, f.next()?))
        }),
        ("Read", "Write"),
    )
}

/// Read and write totals of v2 `io.stat`: lines of
/// `MAJ:MIN rbytes=N wbytes=N rios=N …`.
fn v2_io(s: &str) -> (u64, u64) {
    read_write(
        s.lines()
            .flat_map(|l| l.split_whitespace().skip(1))
            .filter_map(|kv| kv.split_once('=')),
        ("rbytes", "wbytes"),
    )
}

/// Sums of the values of `keys.0` and of `keys.1` in `(key, value)` pairs.
fn read_write<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    keys: (&str, &str),
) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for (k, v) in pairs {
        let Ok(v) = v.parse::<u64>() else { continue };
        if k == keys.0 {
            read = read.saturating_add(v);
        } else if k == keys.1 {
            write = write.saturating_add(v);
        }
    }
    (read, write)
}

/// Received and sent bytes of every interface but loopback in
/// `/proc/<pid>/net/dev` (two header lines, then `IFACE: rx_bytes … (8
/// receive fields) tx_bytes …`).
fn net_dev(s: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for l in s.lines().skip(2) {
        let Some((iface, fields)) = l.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = fields
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "34fd73b7089bd6ccbe480e4392254f5ab15ad6869420374dd47de4e7b5b278f4";

    fn write(dir: &Path, file: &str, content: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(file), content).unwrap();
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     999       2    0    0    0     0          0         0      999       2    0    0    0     0       0          0
  eth0:     200       2    0    0    0     0          0         0       70       1    0    0    0     0       0          0
  eth1:      10       1    0    0    0     0          0         0        5       1    0    0    0     0       0          0
";

    /// A v1 tree as the cgroupfs (`docker/<id>`) or systemd
    /// (`system.slice/docker-<id>.scope`) driver lays it out.
    fn v1_tree(root: &Path, rel: &str, cpuacct: &str, limit: &str) {
        write(
            &root.join(cpuacct).join(rel),
            "cpuacct.usage",
            "1500000000\n",
        );
        let mem = root.join("memory").join(rel);
        write(&mem, "memory.usage_in_bytes", "10485760\n");
        write(&mem, "memory.limit_in_bytes", limit);
        write(
            &mem,
            "memory.stat",
            "cache 4194304\ninactive_file 1048576\ntotal_inactive_file 2097152\n",
        );
        write(&mem, "cgroup.procs", "4242\n4243\n");
        write(
            &root.join("blkio").join(rel),
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 1\nTotal 12289\n",
        );
        write(&root.join("pids").join(rel), "pids.current", "3\n");
    }

    #[test]
    fn v1_cgroupfs_driver() {
        let t = tempfile::tempdir().unwrap();
        let (root, proc) = (t.path().join("cg"), t.path().join("proc"));
        v1_tree(&root, &format!("docker/{ID}"), "cpuacct", "67108864\n");
        write(&proc.join("4242/net"), "dev", NET_DEV);
        let cg = Cgroups::detect(&root, &proc);
        assert_eq!(cg.version(), Version::V1);
        let at = cg.locate(ID).expect("found");
        assert_eq!(
            cg.read(&at).unwrap(),
            Usage {
                cpu_ns: 1_500_000_000,
                memory_bytes: 10_485_760 - 2_097_152,
                memory_limit_bytes: Some(64 << 20),
                block_read_bytes: 4097,
                block_write_bytes: 8192,
                pids: 3,
                network_rx_bytes: 210,
                network_tx_bytes: 75,
            }
        );
    }

    #[test]
    fn v1_systemd_driver_with_joined_controllers_and_no_limit() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cg");
        v1_tree(
            &root,
            &format!("system.slice/docker-{ID}.scope"),
            "cpu,cpuacct",
            "9223372036854771712\n",
        );
        let cg = Cgroups::detect(&root, t.path().join("no-proc"));
        let at = cg.locate(ID).expect("found");
        assert!(
            matches!(&at, Location::V1 { cpuacct, .. } if cpuacct.ends_with(format!("cpu,cpuacct/system.slice/docker-{ID}.scope")))
        );
        let u = cg.read(&at).unwrap();
        assert_eq!(u.memory_limit_bytes, None);
        // No process namespace to read: no network figures, the rest is
        // there.
        assert_eq!((u.network_rx_bytes, u.network_tx_bytes), (0, 0));
        assert_eq!(u.cpu_ns, 1_500_000_000);
    }

    #[test]
    fn v1_without_optional_controllers() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cg");
        let rel = format!("docker/{ID}");
        write(&root.join("cpuacct").join(&rel), "cpuacct.usage", "7\n");
        let mem = root.join("memory").join(&rel);
        write(&mem, "memory.usage_in_bytes", "100\n");
        write(&mem, "memory.limit_in_bytes", "1000\n");
        write(&mem, "memory.stat", "total_inactive_file 200\n");
        let cg = Cgroups::detect(&root, "/nonexistent");
        let u = cg.read(&cg.locate(ID).unwrap()).unwrap();
        // More inactive cache than usage never goes negative.
        assert_eq!(u.memory_bytes, 0);
        assert_eq!((u.pids, u.block_read_bytes), (0, 0));
    }

    #[test]
    fn v2_systemd_and_cgroupfs_drivers() {
        for rel in [
            format!("system.slice/docker-{ID}.scope"),
            format!("docker/{ID}"),
        ] {
            let t = tempfile::tempdir().unwrap();
            let (root, proc) = (t.path().join("cg"), t.path().join("proc"));
            write(&root, "cgroup.controllers", "cpu io memory pids\n");
            let dir = root.join(&rel);
            write(
                &dir,
                "cpu.stat",
                "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            );
            write(&dir, "memory.current", "20971520\n");
            write(&dir, "memory.max", "max\n");
            write(
                &dir,
                "memory.stat",
                "anon 1\nfile 2\nactive_file 3\ninactive_file 4194304\n",
            );
            write(
                &dir,
                "io.stat",
                "8:0 rbytes=1000 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2\n",
            );
            write(&dir, "pids.current", "5\n");
            write(&dir, "cgroup.procs", "0\n77\n");
            write(&proc.join("77/net"), "dev", NET_DEV);
            let cg = Cgroups::detect(&root, &proc);
            assert_eq!(cg.version(), Version::V2);
            let at = cg.locate(ID).expect("found");
            assert_eq!(at, Location::V2(dir.clone()));
            assert_eq!(
                cg.read(&at).unwrap(),
                Usage {
                    cpu_ns: 2_500_000_000,
                    memory_bytes: 20_971_520 - 4_194_304,
                    memory_limit_bytes: None,
                    block_read_bytes: 1001,
                    block_write_bytes: 2002,
                    pids: 5,
                    network_rx_bytes: 210,
                    network_tx_bytes: 75,
                }
            );
            write(&dir, "memory.max", "134217728\n");
            assert_eq!(cg.read(&at).unwrap().memory_limit_bytes, Some(128 << 20));
        }
    }

    #[test]
    fn missing_or_broken_files_are_not_found_or_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cg");
        fs::create_dir_all(root.join("cpuacct/docker")).unwrap();
        let cg = Cgroups::detect(&root, "/proc");
        assert_eq!(cg.locate(ID), None);
        // Not an id: never a path.
        assert_eq!(cg.locate("../../etc"), None);
        assert_eq!(cg.locate(""), None);
        // Found, then the container stopped (its directory went away).
        v1_tree(&root, &format!("docker/{ID}"), "cpuacct", "1\n");
        let at = cg.locate(ID).unwrap();
        fs::remove_dir_all(root.join(format!("cpuacct/docker/{ID}"))).unwrap();
        assert!(cg.read(&at).is_err());
        // A file that is not what it should be.
        v1_tree(&root, &format!("docker/{ID}"), "cpuacct", "lots\n");
        assert!(cg.read(&at).is_err());
    }

    #[test]
    fn parsers() {
        assert_eq!(stat_value("a 1\nab 2\nb x\n", "ab"), Some(2));
        assert_eq!(stat_value("a 1\n", "b"), None);
        assert_eq!(stat_value("b x\n", "b"), None);
        assert_eq!(v1_blkio("Total 0\n"), (0, 0));
        assert_eq!(v2_io(""), (0, 0));
        assert_eq!(net_dev(NET_DEV), (210, 75));
    }
}
