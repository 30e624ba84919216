//! The host's own usage: CPU from /proc/stat, memory from /proc/meminfo,
//! disk from the filesystem holding the engine's data.

use std::path::PathBuf;

use devctl_proto::pb;

/// Samples the host; keeps the previous CPU reading to compute usage over
/// the interval.
#[derive(Debug)]
pub struct HostSampler {
    disk_path: PathBuf,
    memory_used_percent: Option<f64>,
    last_cpu: Option<(u64, u64)>,
}

/// (total, idle) jiffies from the first line of /proc/stat.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total = v.iter().take(8).sum();
    Some((total, v[3] + v[4]))
}

/// (total, available) bytes from /proc/meminfo.
fn memory(meminfo: &str) -> Option<(i64, i64)> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<i64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

impl HostSampler {
    /// A sampler measuring disk usage at `disk_path`.
    /// `memory_used_percent` replaces the measured memory use (tests).
    pub fn new(disk_path: PathBuf, memory_used_percent: Option<f64>) -> Self {
        Self {
            disk_path,
            memory_used_percent,
            last_cpu: None,
        }
    }

    /// The host's usage now (CPU over the time since the last call).
    pub fn sample(&mut self, node: &str, running: i32) -> pb::NodeStats {
        let mut s = pb::NodeStats {
            node: node.to_string(),
            time: Some(std::time::SystemTime::now().into()),
            running_containers: running,
            ..Default::default()
        };
        if let Some(now) = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(cpu_jiffies)
        {
            if let Some((total0, idle0)) = self.last_cpu {
                let total = now.0.saturating_sub(total0);
                let idle = now.1.saturating_sub(idle0);
                if total > 0 {
                    s.cpu_percent = 100.0 * (total - idle.min(total)) as f64 / total as f64;
                }
            }
            self.last_cpu = Some(now);
        }
        if let Some((total, available)) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .as_deref()
            .and_then(memory)
        {
            s.memory_total_bytes = total;
            s.memory_used_bytes = match self.memory_used_percent {
                Some(p) => (total as f64 * p / 100.0) as i64,
                None => total - available,
            };
        }
        if let Ok(fs) = nix::sys::statvfs::statvfs(&self.disk_path) {
            let block = fs.fragment_size() as i64;
            s.disk_total_bytes = fs.blocks() as i64 * block;
            s.disk_used_bytes = (fs.blocks() - fs.blocks_free()) as i64 * block;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_jiffies(stat), Some((1000, 850)));
        let meminfo = "MemTotal:       2048 kB\nMemFree:  100 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(memory(meminfo), Some((2048 * 1024, 1024 * 1024)));
        assert_eq!(cpu_jiffies("garbage"), None);
    }

    #[test]
    fn samples_this_host() {
        let mut h = HostSampler::new("/".into(), None);
        h.sample("n", 0);
        let s = h.sample("n", 2);
        assert!(s.memory_total_bytes > 0 && s.memory_used_bytes > 0);
        assert!(s.disk_total_bytes >= s.disk_used_bytes && s.disk_used_bytes > 0);
        assert!((0.0..=100.0).contains(&s.cpu_percent));
        assert_eq!(s.running_containers, 2);
    }
}
