//! When each running container was last in use, for the inactivity stop.
//! In memory only: a restarted scheduler gives every running container a
//! fresh idle window (it may stop a container late, never early).
//!
//! A container is in use while a session devctl recorded is open (exec, or
//! port-forward/SSH sessions), or while its CPU use is at or above the
//! threshold. Each signal can be switched off ([`IdlePolicy`]).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

/// The cluster's inactivity policy.
#[derive(Debug, Clone, PartialEq)]
pub struct IdlePolicy {
    /// Unused for this long: stopped. Zero turns the inactivity stop off.
    pub timeout: Duration,
    /// Exec sessions count as use.
    pub exec: bool,
    /// Port-forward and SSH sessions count as use.
    pub sessions: bool,
    /// CPU use at or above `cpu_percent` counts as use.
    pub cpu: bool,
    /// CPU threshold, percent of one CPU.
    pub cpu_percent: f64,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30 * 60),
            exec: true,
            sessions: true,
            cpu: true,
            cpu_percent: 5.0,
        }
    }
}

/// Kinds of sessions devctl records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// `devctl exec`.
    Exec,
    /// Port-forward or SSH.
    Forward,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_active: SystemTime,
    exec: u32,
    forward: u32,
}

/// Last use per container name.
#[derive(Debug)]
pub struct Activity {
    policy: IdlePolicy,
    // std lock: map operations only.
    entries: Mutex<HashMap<String, Entry>>,
}

impl Activity {
    /// A tracker applying `policy`.
    pub fn new(policy: IdlePolicy) -> Self {
        Self {
            policy,
            entries: Mutex::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &IdlePolicy {
        &self.policy
    }

    fn with<T>(&self, name: &str, now: SystemTime, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self.entries.lock().expect("activity lock");
        let e = entries.entry(name.to_string()).or_insert(Entry {
            last_active: now,
            exec: 0,
            forward: 0,
        });
        f(e)
    }

    /// `name` was used at `now` (it started, or a session ended).
    pub fn touch(&self, name: &str, now: SystemTime) {
        self.with(name, now, |e| e.last_active = e.last_active.max(now));
    }

    /// A session of `kind` opened in `name`.
    pub fn session_opened(&self, name: &str, kind: SessionKind, now: SystemTime) {
        self.with(name, now, |e| {
            e.last_active = e.last_active.max(now);
            match kind {
                SessionKind::Exec => e.exec += 1,
                SessionKind::Forward => e.forward += 1,
            }
        });
    }

    /// A session of `kind` in `name` ended.
    pub fn session_closed(&self, name: &str, kind: SessionKind, now: SystemTime) {
        self.with(name, now, |e| {
            e.last_active = e.last_active.max(now);
            let n = match kind {
                SessionKind::Exec => &mut e.exec,
                SessionKind::Forward => &mut e.forward,
            };
            *n = n.saturating_sub(1);
        });
    }

    /// Forgets `name` (removed).
    pub fn forget(&self, name: &str) {
        self.entries.lock().expect("activity lock").remove(name);
    }

    /// Takes in `name`'s signals at `now` (its CPU use, if known) and says
    /// how long it has been idle. A container seen for the first time
    /// starts its window now.
    pub fn observe(&self, name: &str, cpu_percent: Option<f64>, now: SystemTime) -> Duration {
        let p = &self.policy;
        self.with(name, now, |e| {
            // Without a CPU figure (stats not flowing) use is unknown: the
            // window does not run, so nothing is stopped early.
            let busy = (p.exec && e.exec > 0)
                || (p.sessions && e.forward > 0)
                || (p.cpu && cpu_percent.is_none_or(|c| c >= p.cpu_percent));
            if busy {
                e.last_active = e.last_active.max(now);
            }
            now.duration_since(e.last_active).unwrap_or_default()
        })
    }

    /// When `name` was last in use, if it is tracked.
    pub fn last_active(&self, name: &str) -> Option<SystemTime> {
        let entries = self.entries.lock().expect("activity lock");
        entries.get(name).map(|e| e.last_active)
    }

    /// Whether `name`, idle for `idle`, is due to be stopped.
    pub fn is_due(&self, idle: Duration) -> bool {
        !self.policy.timeout.is_zero() && idle >= self.policy.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn tracker(policy: IdlePolicy) -> Activity {
        Activity::new(IdlePolicy {
            timeout: Duration::from_secs(60),
            ..policy
        })
    }

    #[test]
    fn idle_time_counts_from_the_last_use() {
        let a = tracker(IdlePolicy::default());
        assert_eq!(a.observe("c", Some(1.0), at(100)), Duration::ZERO);
        assert_eq!(a.observe("c", Some(1.0), at(130)), Duration::from_secs(30));
        // CPU above the threshold is use.
        assert_eq!(a.observe("c", Some(50.0), at(150)), Duration::ZERO);
        assert!(!a.is_due(a.observe("c", Some(0.0), at(200))));
        assert!(a.is_due(a.observe("c", Some(0.0), at(210))));
        a.touch("c", at(215));
        assert_eq!(a.observe("c", Some(0.0), at(220)), Duration::from_secs(5));
        // No CPU figure: use unknown, the window does not run.
        assert_eq!(a.observe("c", None, at(900)), Duration::ZERO);
    }

    #[test]
    fn an_open_session_keeps_a_container_in_use() {
        let a = tracker(IdlePolicy::default());
        a.session_opened("c", SessionKind::Exec, at(0));
        assert_eq!(a.observe("c", Some(0.0), at(500)), Duration::ZERO);
        a.session_closed("c", SessionKind::Exec, at(600));
        assert_eq!(a.observe("c", Some(0.0), at(630)), Duration::from_secs(30));
    }

    #[test]
    fn signals_can_be_switched_off() {
        let a = tracker(IdlePolicy {
            exec: false,
            cpu: false,
            ..IdlePolicy::default()
        });
        a.session_opened("c", SessionKind::Exec, at(0));
        assert_eq!(
            a.observe("c", Some(90.0), at(100)),
            Duration::from_secs(100)
        );
        a.session_opened("c", SessionKind::Forward, at(100));
        assert_eq!(a.observe("c", Some(0.0), at(200)), Duration::ZERO);
        let off = Activity::new(IdlePolicy {
            timeout: Duration::ZERO,
            ..IdlePolicy::default()
        });
        assert!(!off.is_due(Duration::from_secs(1 << 40)));
    }
}
