//! Revoked certificates: `devctl-scheduler revoke NAME|SERIAL` appends to
//! `DIR/revoked` and the running scheduler notices at once (it checks the
//! file's size on every call, and every 250 ms for open streams).
//!
//! One line per revocation, append-only (a single `write` with O_APPEND,
//! then fsync, so concurrent writers never interleave):
//!
//! ```text
//! serial 3f2a…   1764583200     the certificate with this serial
//! name   alice   1764583200     every certificate of alice issued before then
//! ```
//!
//! Revoking a name covers the certificates issued before the revocation:
//! a new certificate issued afterwards (a new laptop) works.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::RwLock,
    time::{SystemTime, UNIX_EPOCH},
};

use devctl_proto::{identity::Identity, validate};
use thiserror::Error;

/// A revocation failure.
#[derive(Debug, Error)]
pub enum RevokeError {
    /// The argument is neither a name nor a serial.
    #[error(
        "{0:?} is neither an identity name (a DNS label such as alice or node-a) nor a certificate serial (32 hex digits)"
    )]
    BadTarget(String),
    /// The file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One certificate.
    Serial(String),
    /// Every certificate of one identity issued so far.
    Name(String),
}

impl Target {
    /// A serial if it is 32 hex digits (colons allowed), otherwise a name.
    pub fn parse(s: &str) -> Result<Self, RevokeError> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Target::Serial(hex.to_ascii_lowercase()));
        }
        validate::dns_label("name", s).map_err(|_| RevokeError::BadTarget(s.to_string()))?;
        Ok(Target::Name(s.to_string()))
    }
}

/// Appends a revocation of `target` to the file at `path`, durably.
pub fn revoke(path: &Path, target: &Target) -> Result<(), RevokeError> {
    let io = |source| RevokeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let line = match target {
        Target::Serial(s) => format!("serial {s} {now}\n"),
        Target::Name(n) => format!("name {n} {now}\n"),
    };
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(line.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[derive(Debug, Default)]
struct List {
    // The file's length when read: it only grows.
    len: u64,
    serials: HashSet<String>,
    names: HashMap<String, i64>,
}

impl List {
    fn parse(text: &str) -> Self {
        let mut list = List::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            match (
                f.next(),
                f.next(),
                f.next().and_then(|t| t.parse::<i64>().ok()),
            ) {
                (Some("serial"), Some(s), Some(_)) => {
                    list.serials.insert(s.to_string());
                }
                (Some("name"), Some(n), Some(t)) => {
                    let at = list.names.entry(n.to_string()).or_insert(t);
                    *at = (*at).max(t);
                }
                _ if line.trim().is_empty() => {}
                _ => tracing::warn!(line, "unreadable line in the revocation list skipped"),
            }
        }
        list
    }

    fn covers(&self, id: &Identity) -> bool {
        self.serials.contains(&id.serial)
            || self
                .names
                .get(&id.name)
                .is_some_and(|&at| id.issued_at <= at)
    }
}

/// The revocation list of a running scheduler, re-read when its file grows.
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    // std lock: held for a lookup or a swap, never across an await.
    list: RwLock<List>,
    // Bumped at every re-read, whoever does it (a call's check or the
    // watcher), so the watcher never misses a change another reader took.
    generation: std::sync::atomic::AtomicU64,
}

impl Revocations {
    /// The list kept in `path` (missing: nothing is revoked).
    pub fn open(path: PathBuf) -> Self {
        let r = Self {
            path,
            list: RwLock::new(List::default()),
            generation: Default::default(),
        };
        r.refresh();
        r
    }

    /// Re-reads the file if it changed. Returns whether it did.
    pub fn refresh(&self) -> bool {
        let len = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len == self.list.read().expect("revocations lock").len {
            return false;
        }
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the revocation list");
                return false;
            }
        };
        let mut list = List::parse(&text);
        list.len = text.len() as u64;
        *self.list.write().expect("revocations lock") = list;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        true
    }

    /// How many times the list has been re-read: a change since a reader
    /// last looked shows as a new number.
    pub fn generation(&self) -> u64 {
        self.refresh();
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `id`'s certificate is revoked (re-reading the list first if
    /// it changed).
    pub fn is_revoked(&self, id: &Identity) -> bool {
        self.refresh();
        self.list.read().expect("revocations lock").covers(id)
    }

    /// As [`Revocations::is_revoked`], without re-reading.
    pub fn covers(&self, id: &Identity) -> bool {
        self.list.read().expect("revocations lock").covers(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devctl_proto::identity::Role;

    fn id(name: &str, serial: &str, issued_at: i64) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Developer,
            serial: serial.into(),
            issued_at,
            expires_at: 0,
            own_only: false,
        }
    }

    #[test]
    fn targets_are_serials_or_names() {
        assert_eq!(
            Target::parse("3F:2A:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd").unwrap(),
            Target::Serial("3f2a00112233445566778899aabbccdd".into())
        );
        assert_eq!(
            Target::parse("alice").unwrap(),
            Target::Name("alice".into())
        );
        assert!(Target::parse("Alice Smith").is_err());
    }

    #[test]
    fn a_name_revokes_what_was_issued_before_and_a_serial_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let r = Revocations::open(path.clone());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let old = id("alice", "aa", now - 60);
        let new = id("alice", "bb", now + 60);
        assert!(!r.is_revoked(&old));
        revoke(&path, &Target::Name("alice".into())).unwrap();
        assert!(r.is_revoked(&old));
        assert!(!r.is_revoked(&new), "a certificate issued later works");
        revoke(&path, &Target::Serial("bb".into())).unwrap();
        assert!(r.is_revoked(&new));
        assert!(!r.is_revoked(&id("bob", "cc", now - 60)));
        assert!(!r.refresh(), "unchanged file is not re-read");
    }
}
