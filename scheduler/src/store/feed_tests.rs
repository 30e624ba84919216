//! The store's commits on the change feed: in commit order, each with the
//! record before and after, and snapshots exact at their revision.

use devctl_proto::container::ContainerExt;
use std::collections::BTreeMap;

use devctl_proto::pb;

use super::Store;
use crate::feed::{Change, Diff};

fn container(name: &str) -> pb::Container {
    pb::Container {
        name: name.into(),
        id: format!("id-{name}"),
        owner: "alice".into(),
        spec: Some(pb::ContainerSpec {
            image: "img".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Applies the feed's container changes after `revision` to `state`.
fn replay(store: &Store, revision: u64, state: &mut BTreeMap<String, pb::Container>) {
    for e in store.feed().read_after(revision, usize::MAX).unwrap() {
        if let Change::Container(Diff { before, after }) = &e.change {
            let name = after.as_ref().or(before.as_ref()).unwrap().name.clone();
            assert_eq!(
                state.get(&name),
                before.as_ref(),
                "the change's `before` is the record the previous changes left"
            );
            match after {
                Some(c) => state.insert(name, c.clone()),
                None => state.remove(&name),
            };
        }
    }
}

#[tokio::test]
async fn every_write_is_one_change_with_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let start = store.feed().latest();
    store.insert_container(container("a"), None).await.unwrap();
    store
        .modify_container("a", |c| {
            c.status_mut().last_error = "boom".into();
            true
        })
        .await
        .unwrap();
    // No change: nothing published.
    store.modify_container("a", |_| false).await.unwrap();
    store.update_container(container("a")).await.unwrap();
    store.delete_container("a").await.unwrap();
    store.delete_container("a").await.unwrap();
    let kinds: Vec<(bool, bool)> = store
        .feed()
        .read_after(start, 100)
        .unwrap()
        .iter()
        .map(|e| match &e.change {
            Change::Container(d) => (d.before.is_some(), d.after.is_some()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [(false, true), (true, true), (true, true), (true, false)]
    );
    let mut state = BTreeMap::new();
    replay(&store, start, &mut state);
    assert!(state.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_plus_the_changes_after_it_is_the_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    // Writers change records while snapshots are taken.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let name = format!("c{w}-{}", i % 5);
                    match i % 3 {
                        0 => {
                            let _ = store.insert_container(container(&name), None).await;
                        }
                        1 => {
                            store
                                .modify_container(&name, move |c| {
                                    c.status_mut().last_error = format!("e{i}");
                                    true
                                })
                                .await
                                .unwrap();
                        }
                        _ => store.delete_container(&name).await.unwrap(),
                    }
                }
            })
        })
        .collect();
    let mut snapshots = Vec::new();
    for _ in 0..10 {
        snapshots.push(store.snapshot().await.unwrap());
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let (now, _) = store
        .list_containers(None, usize::MAX, &Default::default())
        .unwrap();
    let now: BTreeMap<_, _> = now.into_iter().map(|c| (c.name.clone(), c)).collect();
    for s in snapshots {
        let mut state: BTreeMap<_, _> = s
            .containers
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        replay(&store, s.revision, &mut state);
        assert_eq!(state, now, "snapshot at {} replayed", s.revision);
    }
}

#[tokio::test]
async fn revisions_grow_across_reopens_and_nodes_are_known_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let before = {
        let store = Store::open(&path).unwrap();
        store.insert_container(container("a"), None).await.unwrap();
        store
            .put_node(pb::Node {
                name: "n1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        store.feed().latest()
    };
    let store = Store::open(&path).unwrap();
    let s = store.snapshot().await.unwrap();
    assert!(s.revision > before, "{} after {before}", s.revision);
    assert!(store.feed().read_after(before, 10).is_err());
    assert_eq!(s.containers.len(), 1);
    assert_eq!(s.nodes.len(), 1);
    assert_eq!(s.nodes[0].state(), pb::NodeState::Unknown);
}
