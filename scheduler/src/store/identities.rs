//! The registry of identities: every name a certificate or a join was made
//! for (people, agents, the scheduler itself), unique across all kinds.
//!
//! Tables:
//! - `identities`: name → its kind ([`IdentityKind`])
//!
//! A join checks the name, marks its token used and records the name in one
//! transaction, so two joins cannot both take one name.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, StoreError, access::JOIN_TOKENS_USED as JOIN_TOKENS_USED_TABLE};

pub(super) const IDENTITIES: TableDefinition<'_, &str, &str> = TableDefinition::new("identities");

/// What an identity is. People of any role are one kind: a person's role
/// may change (a new certificate), their name stays theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// An admin, developer or viewer.
    Person,
    /// An agent (its name is its node's).
    Agent,
    /// The scheduler's own bus identity.
    Scheduler,
}

impl IdentityKind {
    /// The kind of a certificate of `role`.
    pub fn of(role: devctl_proto::identity::Role) -> Self {
        match role {
            devctl_proto::identity::Role::Agent => Self::Agent,
            _ => Self::Person,
        }
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Agent => "agent",
            Self::Scheduler => "scheduler",
        }
    }

    /// From the stored form (anything unknown is a person).
    pub fn parse(s: &str) -> Self {
        match s {
            "agent" => Self::Agent,
            "scheduler" => Self::Scheduler,
            _ => Self::Person,
        }
    }
}

impl std::fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Person => "person",
            Self::Agent => "agent (node)",
            Self::Scheduler => "the scheduler",
        })
    }
}

/// What [`Store::join`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The token is marked used and the name recorded.
    Joined,
    /// The token had been used already; nothing changed.
    TokenUsed,
    /// The name is an identity already (of this kind); nothing changed.
    NameTaken(IdentityKind),
}

/// How a name is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Only if nobody has the name (a token that names nobody).
    New,
    /// Also if it is an identity already (a token or certificate made for
    /// that name by an admin); its kind stays.
    Named,
}

impl Store {
    /// Records every `(name, kind)` not recorded yet, in one transaction
    /// (imports: identities made before the registry, or by `issue-cert`
    /// while the scheduler ran). Returns the names that were recorded.
    pub async fn import_identities(
        &self,
        names: Vec<(String, IdentityKind)>,
    ) -> Result<Vec<String>, StoreError> {
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            let mut added = Vec::new();
            {
                let mut table = txn.open_table(IDENTITIES)?;
                for (name, kind) in names {
                    if table.get(name.as_str())?.is_none() {
                        table.insert(name.as_str(), kind.as_str())?;
                        added.push(name);
                    }
                }
            }
            txn.commit()?;
            Ok(added)
        })
        .await
    }

    /// Registers `name` as `kind` (`issue-cert`): refused with the existing
    /// kind if the name belongs to an identity of another kind.
    pub fn register_identity_blocking(
        &self,
        name: &str,
        kind: IdentityKind,
    ) -> Result<Option<IdentityKind>, StoreError> {
        let _order = self
            .inner
            .write_order
            .lock()
            .expect("store write lock poisoned");
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(IDENTITIES)?;
            let existing = table.get(name)?.map(|v| IdentityKind::parse(v.value()));
            match existing {
                Some(k) if k != kind => return Ok(Some(k)),
                Some(_) => return Ok(None),
                None => {
                    table.insert(name, kind.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(None)
    }

    /// One join, in one transaction: records `pending` (identities
    /// `issue-cert` made while the scheduler ran, read under the write
    /// lock), then checks that join token `token_id` is unused and, for
    /// [`Claim::New`], that `name` is nobody's; then marks the token used
    /// and records `name` as `kind`.
    pub async fn join(
        &self,
        token_id: &str,
        name: &str,
        kind: IdentityKind,
        claim: Claim,
        pending: impl FnOnce() -> Vec<(String, IdentityKind)> + Send + 'static,
    ) -> Result<JoinOutcome, StoreError> {
        let (id, name) = (token_id.to_string(), name.to_string());
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut identities = txn.open_table(IDENTITIES)?;
                for (n, k) in pending() {
                    if identities.get(n.as_str())?.is_none() {
                        identities.insert(n.as_str(), k.as_str())?;
                    }
                }
                let mut used = txn.open_table(JOIN_TOKENS_USED_TABLE)?;
                if used.get(id.as_str())?.is_some() {
                    return Ok(JoinOutcome::TokenUsed);
                }
                let existing = identities
                    .get(name.as_str())?
                    .map(|v| IdentityKind::parse(v.value()));
                match (existing, claim) {
                    (Some(k), Claim::New) => {
                        // The pending imports are kept: commit them.
                        drop((identities, used));
                        txn.commit()?;
                        return Ok(JoinOutcome::NameTaken(k));
                    }
                    (Some(_), Claim::Named) => {}
                    (None, _) => {
                        identities.insert(name.as_str(), kind.as_str())?;
                    }
                }
                used.insert(id.as_str(), name.as_str())?;
            }
            txn.commit()?;
            Ok(JoinOutcome::Joined)
        })
        .await
    }

    /// The kind of identity `name` is, if it is one.
    pub fn identity(&self, name: &str) -> Result<Option<IdentityKind>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(IDENTITIES)?;
        let found = table.get(name)?;
        Ok(found.map(|v| IdentityKind::parse(v.value())))
    }

    /// Names join tokens were used for (to import them).
    pub fn joined_names(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(JOIN_TOKENS_USED_TABLE)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            out.push(entry?.1.value().to_string());
        }
        Ok(out)
    }

    /// Every container owner (to import them).
    pub fn owners(&self) -> Vec<String> {
        self.index().owners()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_name_is_taken_once_and_kinds_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .import_identities(vec![("node-a".into(), IdentityKind::Agent)])
            .await
            .unwrap();
        let none = Vec::new;
        assert_eq!(
            store
                .join("t1", "node-a", IdentityKind::Person, Claim::New, none)
                .await
                .unwrap(),
            JoinOutcome::NameTaken(IdentityKind::Agent)
        );
        assert_eq!(
            store
                .join("t2", "erin", IdentityKind::Person, Claim::New, || vec![(
                    "dave".into(),
                    IdentityKind::Person
                )])
                .await
                .unwrap(),
            JoinOutcome::Joined
        );
        assert_eq!(
            store
                .join("t2", "frank", IdentityKind::Person, Claim::New, none)
                .await
                .unwrap(),
            JoinOutcome::TokenUsed
        );
        assert_eq!(
            store
                .join("t3", "dave", IdentityKind::Person, Claim::New, none)
                .await
                .unwrap(),
            JoinOutcome::NameTaken(IdentityKind::Person)
        );
        // A token made for the name may re-join it.
        assert_eq!(
            store
                .join("t4", "node-a", IdentityKind::Agent, Claim::Named, none)
                .await
                .unwrap(),
            JoinOutcome::Joined
        );
        assert_eq!(
            store
                .register_identity_blocking("node-a", IdentityKind::Person)
                .unwrap(),
            Some(IdentityKind::Agent)
        );
        assert_eq!(
            store
                .register_identity_blocking("gina", IdentityKind::Person)
                .unwrap(),
            None
        );
        assert_eq!(store.identity("gina").unwrap(), Some(IdentityKind::Person));
    }
}
