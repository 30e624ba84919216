//! Quotas: how many containers, CPUs and how much memory one identity may
//! hold, set per role and overridden per user. Pure: the totals come from
//! the store's index, the check runs under the placement lock.
//!
//! Quotas count every container an identity owns, running or stopped (a
//! stopped one keeps its definition and workspace); removing containers
//! frees quota. Admins are exempt unless the cluster says otherwise.

use std::{collections::HashMap, fmt, str::FromStr};

use devctl_proto::{
    identity::Role,
    units::{format_bytes, format_cpus, parse_cpus, parse_memory},
};

/// Limits of one role or user; `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Containers.
    pub containers: Option<u64>,
    /// CPU, thousandths.
    pub milli_cpus: Option<i64>,
    /// Memory, bytes.
    pub memory_bytes: Option<i64>,
    /// Workspaces (kept or in use).
    pub workspaces: Option<u64>,
    /// The workspaces' measured sizes together, bytes.
    pub workspace_bytes: Option<i64>,
}

impl FromStr for Limits {
    type Err = String;

    /// `containers=10,cpus=8,memory=32g` (any subset).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut l = Limits::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: use KEY=VALUE (containers=10,cpus=8,memory=32g)")
            })?;
            match k {
                "containers" => {
                    l.containers = Some(
                        v.parse()
                            .map_err(|_| format!("containers={v}: use a whole number"))?,
                    )
                }
                "cpus" => l.milli_cpus = Some(parse_cpus(v)?),
                "memory" => l.memory_bytes = Some(parse_memory(v)?),
                "workspaces" => {
                    l.workspaces = Some(
                        v.parse()
                            .map_err(|_| format!("workspaces={v}: use a whole number"))?,
                    )
                }
                "workspace-size" => l.workspace_bytes = Some(parse_memory(v)?),
                other => {
                    return Err(format!(
                        "unknown quota {other:?}: use containers, cpus, memory, workspaces or workspace-size"
                    ));
                }
            }
        }
        Ok(l)
    }
}

/// What one identity holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Containers it owns.
    pub containers: u64,
    /// CPU its containers ask for, thousandths.
    pub milli_cpus: i64,
    /// Memory its containers ask for, bytes.
    pub memory_bytes: i64,
}

/// A create that would go over a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// Who would go over it.
    pub owner: String,
    /// Whose limits they are: `user:NAME` (the user's own) or `role:ROLE`.
    pub subject: String,
    /// `containers`, `CPUs` or `memory`.
    pub what: &'static str,
    /// The limit, as the message says it.
    pub limit: String,
    /// What the owner holds now, as the message says it.
    pub held: String,
    /// What the create asks for, as the message says it.
    pub asked: String,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.what.starts_with("workspace") {
            return write!(
                f,
                "quota exceeded for {}: {} limit {}, {} in use, this container's new workspace asks {}; delete workspaces you no longer need (devctl workspaces ls, devctl workspaces rm), attach an existing one (--workspace), or ask an admin for a larger quota",
                self.owner, self.what, self.limit, self.held, self.asked
            );
        }
        write!(
            f,
            "quota exceeded for {}: {} limit {}, {} in use, this container asks {}; remove containers you no longer need (devctl ls, devctl rm) or ask an admin for a larger quota",
            self.owner, self.what, self.limit, self.held, self.asked
        )
    }
}

/// The cluster's quotas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quotas {
    /// Per role.
    pub roles: HashMap<Role, Limits>,
    /// Per user: replaces the role's limits for that user.
    pub users: HashMap<String, Limits>,
    /// Whether admins are held to quotas too.
    pub admins_too: bool,
}

impl Quotas {
    /// The limits of `owner` with `role` (`None`: exempt or unlimited).
    pub fn limits(&self, owner: &str, role: Role) -> Option<Limits> {
        self.limits_of(owner, role).map(|(_, l)| l)
    }

    /// The limits of `owner` with `role` and whose they are (`user:NAME`
    /// or `role:ROLE`).
    fn limits_of(&self, owner: &str, role: Role) -> Option<(String, Limits)> {
        if role == Role::Admin && !self.admins_too {
            return None;
        }
        if let Some(l) = self.users.get(owner) {
            return Some((format!("user:{owner}"), *l));
        }
        self.roles.get(&role).map(|l| (format!("role:{role}"), *l))
    }

    /// Checks that `owner` (`role`), holding `held`, may add a container
    /// asking `milli_cpus` and `memory_bytes`.
    pub fn check(
        &self,
        owner: &str,
        role: Role,
        held: Held,
        milli_cpus: i64,
        memory_bytes: i64,
    ) -> Result<(), Box<Exceeded>> {
        let Some((subject, l)) = self.limits_of(owner, role) else {
            return Ok(());
        };
        let exceeded = |what, limit: String, held: String, asked: String| {
            Box::new(Exceeded {
                owner: owner.to_string(),
                subject: subject.clone(),
                what,
                limit,
                held,
                asked,
            })
        };
        if let Some(max) = l.containers
            && held.containers + 1 > max
        {
            return Err(exceeded(
                "containers",
                max.to_string(),
                held.containers.to_string(),
                "1 more".into(),
            ));
        }
        if let Some(max) = l.milli_cpus
            && held.milli_cpus + milli_cpus > max
        {
            return Err(exceeded(
                "CPUs",
                format_cpus(max),
                zero_or(held.milli_cpus, format_cpus),
                format_cpus(milli_cpus),
            ));
        }
        if let Some(max) = l.memory_bytes
            && held.memory_bytes + memory_bytes > max
        {
            return Err(exceeded(
                "memory",
                format_bytes(max),
                zero_or(held.memory_bytes, format_bytes),
                format_bytes(memory_bytes),
            ));
        }
        Ok(())
    }
}

impl Quotas {
    /// Checks that `owner` (`role`), holding `count` workspaces of
    /// `bytes` together (as last measured), may make one more.
    pub fn check_workspace(
        &self,
        owner: &str,
        role: Role,
        count: u64,
        bytes: i64,
    ) -> Result<(), Box<Exceeded>> {
        let Some((subject, l)) = self.limits_of(owner, role) else {
            return Ok(());
        };
        let exceeded = |what, limit: String, held: String, asked: String| {
            Box::new(Exceeded {
                owner: owner.to_string(),
                subject: subject.clone(),
                what,
                limit,
                held,
                asked,
            })
        };
        if let Some(max) = l.workspaces
            && count + 1 > max
        {
            return Err(exceeded(
                "workspaces",
                max.to_string(),
                count.to_string(),
                "1 more".into(),
            ));
        }
        if let Some(max) = l.workspace_bytes
            && bytes >= max
        {
            return Err(exceeded(
                "workspace size",
                format_bytes(max),
                zero_or(bytes, format_bytes),
                "1 more".into(),
            ));
        }
        Ok(())
    }
}

/// "0" for nothing held (the table formatters print "-").
fn zero_or(v: i64, format: fn(i64) -> String) -> String {
    if v <= 0 { "0".into() } else { format(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_report_bad_keys() {
        let l: Limits = "containers=3,cpus=1.5,memory=2g".parse().unwrap();
        assert_eq!(
            l,
            Limits {
                containers: Some(3),
                milli_cpus: Some(1500),
                memory_bytes: Some(2 << 30),
                ..Default::default()
            }
        );
        assert!(
            "gpus=1"
                .parse::<Limits>()
                .unwrap_err()
                .contains("unknown quota")
        );
        assert!("containers=x".parse::<Limits>().is_err());
    }

    #[test]
    fn users_override_roles_and_admins_are_exempt_by_default() {
        let mut q = Quotas::default();
        q.roles
            .insert(Role::Developer, "containers=2,cpus=1".parse().unwrap());
        q.roles.insert(Role::Admin, "containers=0".parse().unwrap());
        q.users
            .insert("alice".into(), "containers=5".parse().unwrap());
        let held = |n, cpus| Held {
            containers: n,
            milli_cpus: cpus,
            memory_bytes: 0,
        };
        assert!(q.check("bob", Role::Developer, held(1, 0), 500, 0).is_ok());
        let e = q
            .check("bob", Role::Developer, held(2, 0), 0, 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("containers limit 2, 2 in use"),
            "{e}"
        );
        let e = q
            .check("bob", Role::Developer, held(1, 800), 500, 0)
            .unwrap_err();
        assert!(e.to_string().contains("CPUs limit 1"), "{e}");
        assert_eq!(e.subject, "role:developer");
        // alice's own quota replaces the role's (no CPU limit).
        assert!(
            q.check("alice", Role::Developer, held(4, 9000), 500, 0)
                .is_ok()
        );
        assert!(q.check("root", Role::Admin, held(100, 0), 0, 0).is_ok());
        q.admins_too = true;
        assert!(q.check("root", Role::Admin, held(0, 0), 0, 0).is_err());
        let e = q
            .check("alice", Role::Developer, held(5, 0), 0, 0)
            .unwrap_err();
        assert_eq!((e.subject.as_str(), e.what), ("user:alice", "containers"));
    }

    #[test]
    fn workspaces_count_against_their_own_quota() {
        let mut q = Quotas::default();
        q.roles.insert(
            Role::Developer,
            "workspaces=2,workspace-size=1g".parse().unwrap(),
        );
        assert!(q.check_workspace("bob", Role::Developer, 1, 0).is_ok());
        let e = q.check_workspace("bob", Role::Developer, 2, 0).unwrap_err();
        assert_eq!(e.what, "workspaces");
        assert!(e.to_string().contains("devctl workspaces rm"), "{e}");
        let e = q
            .check_workspace("bob", Role::Developer, 0, 1 << 30)
            .unwrap_err();
        assert_eq!(e.what, "workspace size");
        assert!(q.check_workspace("root", Role::Admin, 9, 0).is_ok());
    }
}
