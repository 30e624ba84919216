//! Workspace records: the `workspaces` table (name → `Workspace`), written
//! as containers are (one fsync'd transaction each, the change published on
//! the feed in commit order). Workspaces are few per user, so reads scan
//! the table rather than keep an index.

use devctl_proto::pb;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, StoreError, decode};
use crate::feed::{Change, Diff};

pub(super) const WORKSPACES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("workspaces");

/// What one owner's workspaces add up to (quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkspaceUsage {
    /// Workspaces.
    pub count: u64,
    /// Their last measured sizes, bytes.
    pub size_bytes: i64,
}

impl Store {
    /// One workspace by name.
    pub fn workspace(&self, name: &str) -> Result<Option<pb::Workspace>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(WORKSPACES)?;
        let found = table.get(name)?;
        found.map(|v| decode(name, v.value())).transpose()
    }

    /// Every workspace, by name.
    pub fn workspaces(&self) -> Result<Vec<pb::Workspace>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(WORKSPACES)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// What `owner`'s workspaces add up to.
    pub fn workspace_usage(&self, owner: &str) -> Result<WorkspaceUsage, StoreError> {
        let mut u = WorkspaceUsage::default();
        for w in self.workspaces()?.iter().filter(|w| w.owner == owner) {
            u.count += 1;
            u.size_bytes += w.size_bytes.max(0);
        }
        Ok(u)
    }

    /// Records workspace `w` (added or replaced).
    pub async fn put_workspace(&self, w: pb::Workspace) -> Result<(), StoreError> {
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            let before = {
                let mut table = txn.open_table(WORKSPACES)?;
                let old = table.insert(w.name.as_str(), w.encode_to_vec().as_slice())?;
                old.map(|v| decode::<pb::Workspace>(&w.name, v.value()))
                    .transpose()?
            };
            txn.commit()?;
            if before.as_ref() != Some(&w) {
                changes.feed.push(Change::Workspace(Diff {
                    before,
                    after: Some(w),
                }));
            }
            Ok(())
        })
        .await
    }

    /// Changes workspace `name` in one transaction (read, `f`, write); `f`
    /// returns whether it changed anything. The new record, or `None` if
    /// there is none.
    pub async fn modify_workspace(
        &self,
        name: &str,
        f: impl FnOnce(&mut pb::Workspace) -> bool + Send + 'static,
    ) -> Result<Option<pb::Workspace>, StoreError> {
        let name = name.to_string();
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            let (before, after) = {
                let mut table = txn.open_table(WORKSPACES)?;
                let current = match table.get(name.as_str())? {
                    Some(v) => decode::<pb::Workspace>(&name, v.value())?,
                    None => return Ok(None),
                };
                let mut w = current.clone();
                if !f(&mut w) || w == current {
                    return Ok(Some(w));
                }
                table.insert(name.as_str(), w.encode_to_vec().as_slice())?;
                (current, w)
            };
            txn.commit()?;
            changes.feed.push(Change::Workspace(Diff {
                before: Some(before),
                after: Some(after.clone()),
            }));
            Ok(Some(after))
        })
        .await
    }

    /// Deletes workspace `name`'s record.
    pub async fn delete_workspace(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |db, changes| {
            let txn = db.begin_write()?;
            let before = {
                let mut table = txn.open_table(WORKSPACES)?;
                match table.remove(name.as_str())? {
                    Some(old) => decode::<pb::Workspace>(&name, old.value())?,
                    None => return Ok(()),
                }
            };
            txn.commit()?;
            changes.feed.push(Change::Workspace(Diff {
                before: Some(before),
                after: None,
            }));
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(name: &str, owner: &str, size: i64) -> pb::Workspace {
        pb::Workspace {
            name: name.into(),
            owner: owner.into(),
            node: "n1".into(),
            size_bytes: size,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn workspaces_survive_reopen_and_reach_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            let start = store.snapshot().await.unwrap().revision;
            store.put_workspace(ws("a", "alice", 10)).await.unwrap();
            store.put_workspace(ws("b", "alice", 5)).await.unwrap();
            store.put_workspace(ws("c", "bob", 1)).await.unwrap();
            let changed = store
                .modify_workspace("b", |w| {
                    w.container = "box".into();
                    true
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(changed.container, "box");
            store.delete_workspace("c").await.unwrap();
            let kinds: Vec<_> = store
                .feed()
                .read_after(start, 10)
                .unwrap()
                .iter()
                .map(|e| match &e.change {
                    Change::Workspace(d) => (d.before.is_some(), d.after.is_some()),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    (false, true),
                    (false, true),
                    (false, true),
                    (true, true),
                    (true, false)
                ]
            );
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.workspace("b").unwrap().unwrap().container, "box");
        assert!(store.workspace("c").unwrap().is_none());
        assert_eq!(
            store.workspace_usage("alice").unwrap(),
            WorkspaceUsage {
                count: 2,
                size_bytes: 15
            }
        );
    }
}
