//! Unit tests of the inventory sync (`sync_inventory`), one per row of the
//! table in docs/architecture.md ("Reconciliation and interrupted
//! creates"), against [`FakeLink`](super::fake_link)'s scripted agents.

use devctl_proto::container::ContainerExt;
use std::time::{Duration, SystemTime};

use devctl_proto::pb::{self, ContainerState, StopReason};

use super::fake_link::{self, Answer, Fixture, Kind, NODE, removed};

/// A record of `name` on [`NODE`] in `state`, last changed long ago.
fn record(name: &str, state: ContainerState) -> pb::Container {
    pb::Container {
        name: name.into(),
        id: format!("id-{name}"),
        owner: "alice".into(),
        update_time: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)).into()),
        spec: Some(pb::ContainerSpec {
            image: "devctl/dev:latest".into(),
            desired_state: pb::DesiredState::Running as i32,
            ..Default::default()
        }),
        status: Some(pb::ContainerStatus {
            state: state as i32,
            node: NODE.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the node's engine reports about `name`.
fn on_node(name: &str, state: ContainerState, exit_code: Option<i32>) -> pb::EngineContainer {
    pb::EngineContainer {
        id: format!("id-{name}"),
        name: name.into(),
        runtime_id: "engine-1".into(),
        state: state as i32,
        exit_code,
        ..Default::default()
    }
}

impl Fixture {
    async fn given(&self, record: pb::Container) {
        self.cluster
            .store()
            .insert_container(record, None)
            .await
            .expect("recorded");
    }

    async fn synced(&self, name: &str) -> pb::Container {
        self.cluster.sync_inventory(NODE).await.expect("synced");
        self.cluster
            .store()
            .container(name)
            .expect("store read")
            .expect("still recorded")
    }
}

#[tokio::test]
async fn inventory_adopts_a_pending_container_the_node_has() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Pending)).await;
    f.link
        .set_inventory(NODE, vec![on_node("web", ContainerState::Running, None)]);
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Running);
    assert_eq!(c.status().runtime_id, "engine-1");
}

#[tokio::test]
async fn inventory_finds_a_lost_container_again_with_the_state_it_has() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Lost)).await;
    f.link
        .set_inventory(NODE, vec![on_node("web", ContainerState::Running, None)]);
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Running);
    assert_eq!(c.status().stop_reason(), StopReason::Unspecified);
}

#[tokio::test]
async fn inventory_marks_a_lost_container_found_stopped_as_stopped_by_node_loss() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Lost)).await;
    f.link.set_inventory(
        NODE,
        vec![on_node("web", ContainerState::Stopped, Some(137))],
    );
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Stopped);
    assert_eq!(c.status().exit_code, Some(137));
    assert_eq!(c.status().stop_reason(), StopReason::NodeLost);
}

#[tokio::test]
async fn inventory_gives_a_record_the_state_that_changed_on_the_node() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Running)).await;
    f.link
        .set_inventory(NODE, vec![on_node("web", ContainerState::Stopped, Some(1))]);
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Stopped);
    assert_eq!(c.status().exit_code, Some(1));
    assert_eq!(c.status().stop_reason(), StopReason::Unspecified);
}

#[tokio::test]
async fn inventory_leaves_a_record_alone_when_nothing_changed_on_the_node() {
    let f = fake_link::cluster();
    let before = pb::Container {
        status: Some(pb::ContainerStatus {
            runtime_id: "engine-1".into(),
            ..Default::default()
        }),
        ..record("web", ContainerState::Running)
    };
    f.given(before.clone()).await;
    f.link
        .set_inventory(NODE, vec![on_node("web", ContainerState::Running, None)]);
    assert_eq!(f.synced("web").await, before);
}

#[tokio::test]
async fn inventory_fails_a_pending_container_that_never_reached_the_node() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Pending)).await;
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Failed);
    assert!(
        c.status().last_error.starts_with(
            "the create was interrupted by a scheduler restart and never reached the node"
        ),
        "{}",
        c.status().last_error
    );
}

#[tokio::test]
async fn inventory_fails_a_lost_container_gone_from_its_node_as_stopped_by_node_loss() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Lost)).await;
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Failed);
    assert_eq!(c.status().stop_reason(), StopReason::NodeLost);
    assert!(
        c.status()
            .last_error
            .contains("was lost and the container is gone from it"),
        "{}",
        c.status().last_error
    );
}

#[tokio::test]
async fn inventory_fails_a_container_missing_on_its_node() {
    let f = fake_link::cluster();
    f.given(record("web", ContainerState::Running)).await;
    let c = f.synced("web").await;
    assert_eq!(c.status().state(), ContainerState::Failed);
    assert_eq!(
        c.status().last_error,
        "the container is missing on node \"node-1\" (removed outside devctl?)"
    );
}

#[tokio::test]
async fn inventory_leaves_a_failed_record_missing_on_its_node_as_it_is() {
    let f = fake_link::cluster();
    let before = pb::Container {
        status: Some(pb::ContainerStatus {
            last_error: "create: the agent did not answer".into(),
            ..Default::default()
        }),
        ..record("web", ContainerState::Failed)
    };
    f.given(before.clone()).await;
    assert_eq!(f.synced("web").await, before);
}

#[tokio::test]
async fn inventory_reports_an_unknown_container_and_removes_it_after_the_grace_period() {
    tokio::time::pause();
    let f = fake_link::cluster();
    let grace = f.cluster.shared.settings.orphan_grace;
    f.link
        .set_inventory(NODE, vec![on_node("stray", ContainerState::Running, None)]);

    f.cluster.sync_inventory(NODE).await.expect("synced");
    assert_eq!(f.link.kinds(), [Kind::Inventory], "only reported at first");

    tokio::time::advance(grace - Duration::from_secs(1)).await;
    f.cluster.sync_inventory(NODE).await.expect("synced");
    assert_eq!(f.link.kinds(), [Kind::Inventory, Kind::Inventory]);

    tokio::time::advance(Duration::from_secs(1)).await;
    f.link
        .answer_for(Kind::Remove, "id-stray", Answer::Reply(removed()));
    f.cluster.sync_inventory(NODE).await.expect("synced");
    assert_eq!(
        f.link.kinds(),
        [
            Kind::Inventory,
            Kind::Inventory,
            Kind::Inventory,
            Kind::Remove
        ]
    );
    assert!(f.link.inventory(NODE).is_empty());
    let events = f.link.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.r#type(), pb::EventType::ContainerRemoved);
    assert_eq!(e.reason, "unknown_container");
    assert_eq!(
        (e.container.as_str(), e.container_id.as_str()),
        ("stray", "id-stray")
    );
    assert!(
        f.cluster
            .store()
            .container("stray")
            .expect("read")
            .is_none()
    );
}
