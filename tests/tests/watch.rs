//! The change feed through the public call (WatchService.WatchChanges): a
//! snapshot, then every committed change in order; a watch resumed from an
//! older revision misses nothing; a developer sees only their own
//! containers; revisions from the future or from an earlier scheduler
//! process are refused with OUT_OF_RANGE.

use devctl_proto::container::ContainerExt;
use std::{path::Path, time::Duration};

use devctl_proto::pb::{
    self, ChangeType, watch_changes_response::Object, watch_service_client::WatchServiceClient,
};
use devctl_tests::{IMAGE, TestCluster, wait_until};
use nix::sys::signal::Signal;
use tokio::runtime::Runtime;
use tonic::{Code, Streaming};

/// How long one response may take to arrive.
const NEXT: Duration = Duration::from_secs(30);

type Changes = Streaming<pb::WatchChangesResponse>;

async fn watch(c: &TestCluster, tls: &Path, after_revision: u64) -> Result<Changes, tonic::Status> {
    let mut client = WatchServiceClient::new(c.grpc_channel(tls).await);
    client
        .watch_changes(pb::WatchChangesRequest {
            after_revision,
            kinds: vec![],
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The `ErrorInfo.reason` of a refusal.
fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"))
}

async fn next(s: &mut Changes) -> pb::WatchChangesResponse {
    tokio::time::timeout(NEXT, s.message())
        .await
        .expect("a change within 30 s")
        .expect("the stream stays up")
        .expect("the stream does not end")
}

/// The snapshot's records and its revision.
async fn snapshot(s: &mut Changes) -> (Vec<Object>, u64) {
    let mut records = Vec::new();
    loop {
        let r = next(s).await;
        match r.r#type() {
            ChangeType::Snapshot => records.push(r.object.expect("a snapshot record")),
            ChangeType::SnapshotEnd => return (records, r.revision),
            other => panic!("{other:?} inside the snapshot: {r:?}"),
        }
    }
}

/// Reads changes until one satisfies `last`; returns them all.
async fn until(
    s: &mut Changes,
    mut last: impl FnMut(&pb::WatchChangesResponse) -> bool,
) -> Vec<pb::WatchChangesResponse> {
    let mut seen = Vec::new();
    loop {
        let r = next(s).await;
        let done = last(&r);
        seen.push(r);
        if done {
            return seen;
        }
    }
}

fn container(r: &pb::WatchChangesResponse) -> Option<&pb::Container> {
    match &r.object {
        Some(Object::Container(c)) => Some(c),
        _ => None,
    }
}

fn node(r: &pb::WatchChangesResponse) -> Option<&pb::Node> {
    match &r.object {
        Some(Object::Node(n)) => Some(n),
        _ => None,
    }
}

/// (type, record name, state) of each change, for comparing streams.
fn summary(changes: &[pb::WatchChangesResponse]) -> Vec<(u64, ChangeType, String, i32)> {
    changes
        .iter()
        .map(|r| {
            let (name, state) = match &r.object {
                Some(Object::Container(c)) => (c.name.clone(), c.status().state),
                Some(Object::Node(n)) => (n.name.clone(), n.state),
                Some(Object::Workspace(w)) => panic!("workspaces were not asked for: {w:?}"),
                None => (String::new(), 0),
            };
            (r.revision, r.r#type(), name, state)
        })
        .collect()
}

#[test]
fn a_watch_gets_a_snapshot_then_every_change_in_order_and_resumes_without_gaps() {
    let mut c = TestCluster::start(&["a", "b"]);
    let rt = Runtime::new().unwrap();
    let admin = c.admin_tls();
    let (a, b) = (c.node("a"), c.node("b"));

    let mut live = rt.block_on(watch(&c, &admin, 0)).unwrap();
    let (records, start) = rt.block_on(snapshot(&mut live));
    let mut names: Vec<_> = records
        .iter()
        .map(|o| match o {
            Object::Node(n) => (n.name.clone(), n.state()),
            Object::Container(c) => panic!("no container yet: {c:?}"),
            Object::Workspace(w) => panic!("workspaces were not asked for: {w:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (a.clone(), pb::NodeState::Ready),
            (b.clone(), pb::NodeState::Ready)
        ]
    );

    // A create, a stop and a node going down, in this order.
    c.devctl(&["create", "web", "--image", IMAGE, "--node", &a])
        .ok();
    c.devctl(&["stop", "web", "-t", "0"]).ok();
    c.agent("b").signal(Signal::SIGTERM);
    let changes = rt.block_on(until(&mut live, |r| {
        node(r).is_some_and(|n| n.name == b && n.state() == pb::NodeState::Down)
    }));
    let revisions: Vec<u64> = changes.iter().map(|r| r.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]) && revisions[0] > start,
        "revisions grow from the snapshot's {start}: {revisions:?}"
    );
    let position = |what: &str, f: &dyn Fn(&pb::WatchChangesResponse) -> bool| {
        changes
            .iter()
            .position(f)
            .unwrap_or_else(|| panic!("{what} not seen in {:#?}", summary(&changes)))
    };
    let added = position("web added", &|r| {
        r.r#type() == ChangeType::Added && container(r).is_some_and(|c| c.name == "web")
    });
    let running = position("web running", &|r| {
        r.r#type() == ChangeType::Modified
            && container(r).is_some_and(|c| c.status().state() == pb::ContainerState::Running)
    });
    let stopped = position("web stopped", &|r| {
        container(r).is_some_and(|c| c.status().state() == pb::ContainerState::Stopped)
    });
    let down = changes.len() - 1;
    assert!(
        added < running && running < stopped && stopped < down,
        "out of order: {:#?}",
        summary(&changes)
    );
    assert_eq!(container(&changes[added]).unwrap().status().node, a);
    // As Get shows it (the cluster's idle window included).
    let get = c.devctl(&["get", "web", "-o", "json"]).json();
    assert_eq!(
        container(&changes[added])
            .unwrap()
            .status()
            .idle_timeout_seconds,
        get["status"]["idleTimeoutSeconds"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .expect("idle window in get"),
    );

    // Resumed from the snapshot's revision: the very same changes.
    let mut resumed = rt.block_on(watch(&c, &admin, start)).unwrap();
    let again = rt.block_on(until(&mut resumed, |r| {
        r.revision == *revisions.last().unwrap()
    }));
    assert_eq!(summary(&again), summary(&changes));
    // From the middle: the rest, nothing before.
    let mut middle = rt.block_on(watch(&c, &admin, revisions[stopped])).unwrap();
    assert_eq!(
        rt.block_on(next(&mut middle)).revision,
        revisions[stopped + 1]
    );

    // A revision not reached yet.
    let latest = *revisions.last().unwrap();
    let err = rt.block_on(watch(&c, &admin, latest + 1_000)).unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(reason(&err), "REVISION_AHEAD");
    assert!(
        err.message().contains("after_revision"),
        "{}",
        err.message()
    );

    // After a scheduler restart, revisions go on growing, and one of the
    // earlier process is refused: the client takes a new snapshot.
    drop((live, resumed, middle));
    let mut s = c.scheduler.take().unwrap();
    s.signal(Signal::SIGTERM);
    s.wait_exit(Duration::from_secs(20));
    c.start_scheduler().unwrap();
    let err = rt.block_on(watch(&c, &admin, latest)).unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("snapshot"), "{}", err.message());
    assert_eq!(reason(&err), "REVISION_COMPACTED");
    let mut fresh = rt.block_on(watch(&c, &admin, 0)).unwrap();
    let (records, after_restart) = rt.block_on(snapshot(&mut fresh));
    assert!(after_restart > latest, "{after_restart} after {latest}");
    let web = records
        .iter()
        .find_map(|o| match o {
            Object::Container(c) if c.name == "web" => Some(c),
            _ => None,
        })
        .expect("web in the new snapshot");
    assert_eq!(web.status().state(), pb::ContainerState::Stopped);
}

#[test]
fn a_developer_watches_only_their_own_containers() {
    let c = TestCluster::start(&["a"]);
    let rt = Runtime::new().unwrap();
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    c.devctl_as(
        &bob,
        &["create", "bob-old", "--image", IMAGE, "-e", "K=bob-secret"],
    )
    .ok();
    c.devctl_as(&alice, &["create", "alice-old", "--image", IMAGE])
        .ok();

    let mut mine = rt.block_on(watch(&c, &alice, 0)).unwrap();
    let (records, _) = rt.block_on(snapshot(&mut mine));
    let containers: Vec<_> = records
        .iter()
        .filter_map(|o| match o {
            Object::Container(c) => Some(c.name.as_str()),
            Object::Node(_) | Object::Workspace(_) => None,
        })
        .collect();
    assert_eq!(containers, ["alice-old"]);
    assert!(
        records.iter().any(|o| matches!(o, Object::Node(_))),
        "a developer sees the nodes"
    );

    // Bob's change commits first: had it been sent, it would come before
    // alice's.
    c.devctl_as(&bob, &["create", "bob-new", "--image", IMAGE])
        .ok();
    c.devctl_as(&alice, &["create", "alice-new", "--image", IMAGE])
        .ok();
    let seen = rt.block_on(until(&mut mine, |r| {
        container(r).is_some_and(|c| c.name == "alice-new")
    }));
    for r in &seen {
        if let Some(c) = container(r) {
            assert_eq!(c.owner, "alice", "alice saw {:?}", summary(&seen));
        }
    }

    // `devctl watch` shows the same feed, one JSON object per line.
    let mut cli = c.spawn_devctl_as(
        &alice,
        &["watch", "-o", "json", "--kind", "container"],
        c.scratch().join("watch.log"),
    );
    let lines = |cli: &devctl_tests::Proc| -> Vec<serde_json::Value> {
        cli.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_until("devctl watch's snapshot", NEXT, || {
        lines(&cli)
            .iter()
            .any(|v| v["type"] == "CHANGE_TYPE_SNAPSHOT_END")
            .then_some(())
    });
    c.devctl_as(&alice, &["create", "alice-cli", "--image", IMAGE])
        .ok();
    let printed = wait_until("devctl watch to print alice-cli", NEXT, || {
        let all = lines(&cli);
        all.iter()
            .any(|v| v["type"] == "CHANGE_TYPE_ADDED" && v["container"]["name"] == "alice-cli")
            .then_some(all)
    });
    assert!(cli.is_running(), "devctl watch follows until interrupted");
    let names: Vec<&str> = printed
        .iter()
        .filter_map(|v| v["container"]["name"].as_str())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("alice-")) && names.contains(&"alice-old"),
        "{names:?}"
    );
    assert!(
        printed.iter().all(|v| v["node"].is_null()),
        "--kind container: no nodes"
    );

    // The admin sees both, with bob's environment values.
    let mut all = rt.block_on(watch(&c, &c.admin_tls(), 0)).unwrap();
    let (records, _) = rt.block_on(snapshot(&mut all));
    let bob_old = records
        .iter()
        .find_map(|o| match o {
            Object::Container(c) if c.name == "bob-old" => Some(c),
            _ => None,
        })
        .expect("the admin sees bob's container");
    assert_eq!(bob_old.spec().env["K"], "bob-secret");
}
