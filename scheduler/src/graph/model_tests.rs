//! Tests of [`super::model`]: rows from feed changes and history events,
//! image references and Dockerfile bases.

use super::model::*;
use crate::feed::{Change, Diff, Entry};
use devctl_proto::{container::ContainerExt, pb};
use std::time::SystemTime;

fn container(id: &str, state: pb::ContainerState) -> pb::Container {
    pb::Container {
        name: "web".into(),
        id: id.into(),
        owner: "alice".into(),
        spec: Some(pb::ContainerSpec {
            image: "devctl/dev:1".into(),
            resources: Some(pb::Resources {
                milli_cpus: 1500,
                memory_bytes: 1 << 30,
            }),
            ..Default::default()
        }),
        status: Some(pb::ContainerStatus {
            state: state as i32,
            node: "n1".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn entry(revision: u64, change: Change) -> Entry {
    Entry {
        revision,
        time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(revision),
        change,
    }
}

#[test]
fn the_latest_change_of_a_container_wins_and_a_deletion_keeps_its_last_state() {
    let mut b = Batch::default();
    let pending = container("c1", pb::ContainerState::Pending);
    let running = container("c1", pb::ContainerState::Running);
    b.add_change(&entry(
        1,
        Change::Container(Diff {
            before: None,
            after: Some(pending.clone()),
        }),
    ));
    b.add_change(&entry(
        2,
        Change::Container(Diff {
            before: Some(pending),
            after: Some(running.clone()),
        }),
    ));
    let rows: Vec<_> = b.containers().collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "running");
    assert!(rows[0].added, "still the container's first appearance");
    assert!(rows[0].moved, "an added container gets its host edge");
    assert_eq!(rows[0].cpus, 1.5);
    assert_eq!(b.revision, Some(2));
    b.add_change(&entry(
        3,
        Change::Container(Diff {
            before: Some(running),
            after: None,
        }),
    ));
    assert_eq!(b.deleted().count(), 1);
    assert_eq!(b.containers().count(), 1);
    assert_eq!(b.len(), 3);
}

#[test]
fn only_a_change_of_node_rewrites_the_host_edge() {
    let running = container("c1", pb::ContainerState::Running);
    let stopped = container("c1", pb::ContainerState::Stopped);
    let mut moved = stopped.clone();
    moved.status_mut().node = "n2".into();
    let update = |before: &pb::Container, after: &pb::Container| {
        let mut b = Batch::default();
        b.add_change(&entry(
            1,
            Change::Container(Diff {
                before: Some(before.clone()),
                after: Some(after.clone()),
            }),
        ));
        let row = b.containers().next().unwrap().clone();
        (row.added, row.moved)
    };
    assert_eq!(update(&running, &stopped), (false, false));
    assert_eq!(update(&stopped, &moved), (false, true));
}

#[test]
fn session_events_become_starts_and_ends_and_others_only_move_the_cursor() {
    let mut b = Batch::default();
    let ev = |seq, ty: pb::EventType| pb::Event {
        sequence: seq,
        r#type: ty as i32,
        session: "s1".into(),
        actor: "bob".into(),
        container_id: "c1".into(),
        time: Some(prost_types::Timestamp {
            seconds: 100,
            nanos: 0,
        }),
        ..Default::default()
    };
    b.add_event(&ev(4, pb::EventType::ExecStarted), false);
    b.add_event(&ev(5, pb::EventType::ContainerStopped), false);
    b.add_event(&ev(6, pb::EventType::ExecEnded), false);
    b.add_event(&ev(7, pb::EventType::ContainerCreated), false);
    assert!(
        b.gone_created().is_empty(),
        "a live container comes from the feed"
    );
    b.add_event(&ev(8, pb::EventType::ContainerCreated), true);
    b.add_event(&ev(9, pb::EventType::ContainerRemoved), true);
    assert_eq!(b.gone_created().len(), 1);
    assert_eq!(b.gone_removed().len(), 1);
    b.add_event(
        &pb::Event {
            sequence: 10,
            r#type: pb::EventType::ImageBuilt as i32,
            image: "team/tool:1".into(),
            base_image: "debian:12".into(),
            ..Default::default()
        },
        false,
    );
    assert_eq!(b.images().len(), 1);
    assert_eq!(b.images()[0].base.as_deref(), Some("debian:12"));
    assert_eq!(b.started().len(), 1);
    assert_eq!(b.ended().len(), 1);
    assert_eq!(b.started()[0].kind, "exec");
    assert_eq!(b.event_sequence, Some(10));
    assert!(!b.is_empty());
}

#[test]
fn image_references_are_normalised() {
    let r = |s: &str| {
        let i = image_ref(s);
        (i.reference, i.name, i.tag, i.digest)
    };
    assert_eq!(
        r("devctl/dev:1"),
        (
            "devctl/dev:1".into(),
            "devctl/dev".into(),
            "1".into(),
            "".into()
        )
    );
    assert_eq!(image_ref("busybox").reference, "busybox:latest");
    assert_eq!(
        image_ref("docker.io/library/busybox").reference,
        "busybox:latest"
    );
    assert_eq!(
        image_ref("127.0.0.1:5000/team/img").reference,
        "127.0.0.1:5000/team/img:latest"
    );
    assert_eq!(
        r("reg:5000/img:2@sha256:ab"),
        (
            "reg:5000/img:2@sha256:ab".into(),
            "reg:5000/img".into(),
            "2".into(),
            "sha256:ab".into()
        )
    );
    assert_eq!(image_ref("img@sha256:ab").tag, "");
}

#[test]
fn a_dockerfile_base_is_its_final_stage_image() {
    assert_eq!(
        dockerfile_base("FROM devctl/busybox:latest\nRUN true\n").as_deref(),
        Some("devctl/busybox:latest")
    );
    let multi = "FROM --platform=linux/amd64 golang:1 AS build\nRUN go build\nfrom build AS test\nFROM debian:12\nCOPY --from=build /x /x\n";
    assert_eq!(dockerfile_base(multi).as_deref(), Some("debian:12"));
    assert_eq!(
        dockerfile_base("FROM golang:1 AS b\nFROM b\n").as_deref(),
        Some("golang:1")
    );
    assert_eq!(dockerfile_base("FROM scratch\nCOPY x /\n"), None);
    assert_eq!(dockerfile_base("ARG V\nFROM img:$V\n"), None);
    assert_eq!(dockerfile_base("RUN true"), None);
}

#[test]
fn statuses_are_short_lowercase_words() {
    assert_eq!(status_name(pb::ContainerState::Lost as i32), "lost");
    assert_eq!(status_name(99), "unspecified");
}
