//! Unit tests of every reply branch of a create, and of what happens to
//! the record when the outcome on the node is unknown
//! (`forget_or_mark_failed`), against [`FakeLink`](super::fake_link)'s
//! scripted agents.

use devctl_proto::container::ContainerExt;
use devctl_proto::pb::{self, AgentErrorCode, ContainerState, agent_reply::Result as Reply};

use super::{
    CreateOptions, Error, ErrorKind,
    fake_link::{self, Answer, Fixture, Kind, NODE, refusal, removed, status},
};

impl Fixture {
    async fn create(&self, name: &str) -> Result<pb::Container, Error> {
        self.cluster
            .create(fake_link::spec(name), "alice", CreateOptions::default())
            .await
    }

    fn record(&self, name: &str) -> Option<pb::Container> {
        self.cluster.store().container(name).expect("store read")
    }
}

#[tokio::test]
async fn create_the_agent_confirms_is_recorded_running() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Running, None)),
    );
    let c = f.create("web").await.expect("created");
    assert_eq!(c.status().state(), ContainerState::Running);
    assert_eq!(c.status().node, NODE);
    let r = f.record("web").expect("recorded");
    assert_eq!(
        (r.status().state(), r.id.as_str()),
        (ContainerState::Running, c.id.as_str())
    );
    assert_eq!(r.status().runtime_id, "engine-1");
    assert_eq!(f.link.kinds(), [Kind::Create]);
}

#[tokio::test]
async fn create_whose_command_exits_at_once_is_recorded_stopped_with_the_reason() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Stopped, Some(3))),
    );
    let c = f.create("web").await.expect("created");
    assert_eq!(c.status().state(), ContainerState::Stopped);
    let r = f.record("web").expect("recorded");
    assert!(
        r.status()
            .last_error
            .contains("exited right after it started (exit code 3)"),
        "{}",
        r.status().last_error
    );
}

#[tokio::test]
async fn create_with_a_missing_image_leaves_no_record() {
    let f = fake_link::cluster();
    let missing = refusal(
        AgentErrorCode::ImageNotFound,
        "image devctl/dev:latest not found",
    );
    f.link.answer(Kind::Create, Answer::Reply(missing));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ImageNotFound { .. })
            && e.to_string() == "image devctl/dev:latest not found",
        "{e:?}"
    );
    assert!(f.record("web").is_none());
    // The agent left nothing behind: no cleanup is sent.
    assert_eq!(f.link.kinds(), [Kind::Create]);
}

#[tokio::test]
async fn create_whose_start_the_agent_cleaned_up_after_leaves_no_record() {
    let f = fake_link::cluster();
    let refused = refusal(AgentErrorCode::Invalid, "memory limit too low");
    f.link.answer(Kind::Create, Answer::Reply(refused));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::EngineRejected { .. })
            && e.to_string() == "memory limit too low",
        "{e:?}"
    );
    assert!(f.record("web").is_none());
    assert_eq!(f.link.kinds(), [Kind::Create]);
}

#[tokio::test]
async fn create_whose_start_failed_on_the_engine_is_removed_then_forgotten() {
    let f = fake_link::cluster();
    let failed = refusal(AgentErrorCode::Engine, "start: OCI runtime error");
    f.link.answer(Kind::Create, Answer::Reply(failed));
    f.link.answer(Kind::Remove, Answer::Reply(removed()));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Internal)
            && e.to_string().contains("start: OCI runtime error"),
        "{e:?}"
    );
    assert!(f.record("web").is_none());
    assert_eq!(f.link.kinds(), [Kind::Create, Kind::Remove]);
}

#[tokio::test]
async fn create_on_a_node_whose_agent_is_not_connected_leaves_no_record() {
    let f = fake_link::cluster();
    f.link.answer(Kind::Create, Answer::NoResponders);
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. })
            && e.to_string().contains("is not connected to the bus"),
        "{e:?}"
    );
    assert!(f.record("web").is_none());
    // Nobody received the create: there is nothing to clean up.
    assert_eq!(f.link.kinds(), [Kind::Create]);
}

#[tokio::test]
async fn create_without_an_answer_is_removed_then_forgotten() {
    let f = fake_link::cluster();
    f.link.answer(Kind::Create, Answer::Silence);
    f.link.answer(Kind::Remove, Answer::Reply(removed()));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. })
            && e.to_string().contains("did not answer within"),
        "{e:?}"
    );
    assert!(f.record("web").is_none());
    assert_eq!(f.link.kinds(), [Kind::Create, Kind::Remove]);
}

#[tokio::test]
async fn create_answered_after_the_deadline_is_removed_and_not_brought_back() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Create,
        Answer::Late(status(ContainerState::Running, None)),
    );
    f.link.answer(Kind::Remove, Answer::Reply(removed()));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. }),
        "{e:?}"
    );
    assert_eq!(f.link.late_answers().len(), 1);
    assert!(f.record("web").is_none());
    assert!(f.link.inventory(NODE).is_empty(), "the cleanup removed it");

    // The next inventory finds nothing to adopt or to report.
    f.cluster.sync_inventory(NODE).await.expect("synced");
    assert!(f.record("web").is_none());
    assert!(f.link.events().is_empty());

    // The name is free again, for exactly one new container.
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Running, None)),
    );
    let again = f.create("web").await.expect("created again");
    assert_eq!(f.cluster.store().names_on_node(NODE), ["web"]);
    assert_eq!(f.record("web").expect("recorded").id, again.id);
    assert_eq!(
        f.link.kinds(),
        [Kind::Create, Kind::Remove, Kind::Inventory, Kind::Create]
    );
}

#[tokio::test]
async fn create_answered_late_whose_cleanup_went_unanswered_is_failed_then_adopted_once() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Create,
        Answer::Late(status(ContainerState::Running, None)),
    );
    f.link.answer(Kind::Remove, Answer::Silence);
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. }),
        "{e:?}"
    );
    let failed = f.record("web").expect("kept");
    assert_eq!(failed.status().state(), ContainerState::Failed);

    // The node has the container the late create made: the record takes
    // its state; nothing is duplicated or reported as unknown.
    f.cluster.sync_inventory(NODE).await.expect("synced");
    let r = f.record("web").expect("recorded");
    assert_eq!(
        (r.status().state(), r.id.clone()),
        (ContainerState::Running, failed.id)
    );
    assert!(
        r.status().last_error.is_empty(),
        "{}",
        r.status().last_error
    );
    assert_eq!(f.cluster.store().names_on_node(NODE), ["web"]);
    assert!(f.link.events().is_empty());
}

#[tokio::test]
async fn unknown_outcome_with_the_container_confirmed_gone_forgets_the_record() {
    let f = fake_link::cluster();
    f.link.answer(Kind::Create, Answer::Silence);
    let gone = refusal(AgentErrorCode::ContainerNotFound, "no such container");
    f.link.answer(Kind::Remove, Answer::Reply(gone));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. })
            && !e.to_string().contains("recorded as failed"),
        "{e:?}"
    );
    assert!(f.record("web").is_none());
}

#[tokio::test]
async fn unknown_outcome_without_an_answer_to_the_cleanup_keeps_the_record_failed() {
    let f = fake_link::cluster();
    f.link.answer(Kind::Create, Answer::Silence);
    f.link.answer(Kind::Remove, Answer::Silence);
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. })
            && e.to_string().ends_with(
                "; the container is recorded as failed: remove it with `devctl rm --force web`"
            ),
        "{e:?}"
    );
    let r = f.record("web").expect("kept");
    assert_eq!(r.status().state(), ContainerState::Failed);
    assert!(
        r.status()
            .last_error
            .starts_with("create: the agent of node"),
        "{}",
        r.status().last_error
    );
}

#[tokio::test]
async fn unknown_outcome_with_the_cleanup_refused_keeps_the_record_failed() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Create,
        Answer::Reply(Reply::Inventory(pb::Inventory::default())),
    );
    let refused = refusal(AgentErrorCode::Engine, "engine unreachable");
    f.link.answer(Kind::Remove, Answer::Reply(refused));
    let e = f.create("web").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Internal)
            && e.to_string().contains("unexpected reply")
            && e.to_string().contains("recorded as failed"),
        "{e:?}"
    );
    let r = f.record("web").expect("kept");
    assert_eq!(r.status().state(), ContainerState::Failed);
    assert_eq!(f.link.kinds(), [Kind::Create, Kind::Remove]);
}
