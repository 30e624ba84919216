//! Unit tests of workspaces against [`FakeLink`](super::fake_link)'s
//! scripted agents: what a create tells the agent about its workspace and
//! records, what rm keeps, what a refusal or an interrupted move leaves.

use devctl_proto::pb::{self, AgentErrorCode, ContainerState};

use super::{
    CreateOptions, ErrorKind,
    fake_link::{self, Answer, Fixture, Kind, NODE, refusal, removed, status},
};

impl Fixture {
    async fn create_running(&self, name: &str) -> pb::Container {
        self.link.answer(
            Kind::Create,
            Answer::Reply(status(ContainerState::Running, None)),
        );
        self.cluster
            .create(fake_link::spec(name), "alice", CreateOptions::default())
            .await
            .expect("created")
    }

    fn ws(&self, name: &str) -> Option<pb::Workspace> {
        self.cluster.store().workspace(name).expect("store read")
    }
}

#[tokio::test]
async fn a_new_workspace_is_made_then_kept_by_rm_and_required_by_the_next_create() {
    let f = fake_link::cluster();
    f.create_running("web").await;
    let w = f.ws("web").expect("recorded");
    assert_eq!(
        (w.node.as_str(), w.state(), w.container.as_str()),
        (NODE, pb::WorkspaceState::Ready, "web")
    );
    assert_eq!(w.volume, format!("devctl-ws_{NODE}_web"));
    f.link.answer(Kind::Remove, Answer::Reply(removed()));
    f.cluster.delete("web", true, false, "alice").await.unwrap();
    let w = f.ws("web").expect("kept");
    assert!(w.container.is_empty());
    f.create_running("web").await;
    let attaches = f.link.create_attaches();
    let must_exist: Vec<bool> = attaches
        .iter()
        .map(|a| a.as_ref().expect("a workspace").must_exist)
        .collect();
    // The first create makes the volume; the second needs the data there.
    assert_eq!(must_exist, [false, true]);
    assert_eq!(f.ws("web").unwrap().container, "web");
}

#[tokio::test]
async fn a_refused_create_of_a_new_workspace_leaves_no_workspace() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Create,
        Answer::Reply(refusal(AgentErrorCode::ImageNotFound, "no image")),
    );
    let err = f
        .cluster
        .create(fake_link::spec("web"), "alice", CreateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::ImageNotFound { .. }));
    assert!(f.ws("web").is_none());
}

#[tokio::test]
async fn a_volume_missing_on_the_node_fails_the_create_and_marks_the_workspace() {
    let f = fake_link::cluster();
    f.create_running("web").await;
    f.link.answer(Kind::Remove, Answer::Reply(removed()));
    f.cluster.delete("web", true, false, "alice").await.unwrap();
    f.link.answer(
        Kind::Create,
        Answer::Reply(refusal(AgentErrorCode::WorkspaceMissing, "gone")),
    );
    let err = f
        .cluster
        .create(fake_link::spec("web"), "alice", CreateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WorkspaceMissing { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("devctl workspaces rm web"),
        "{err}"
    );
    let w = f.ws("web").unwrap();
    assert_eq!(w.state(), pb::WorkspaceState::Missing);
    assert!(w.container.is_empty(), "released again");
    assert!(f.cluster.store().container("web").unwrap().is_none());
}

#[tokio::test]
async fn another_owners_workspace_is_not_attached_and_one_in_use_is_not_shared() {
    let f = fake_link::cluster();
    f.create_running("web").await;
    let mut spec = fake_link::spec("other");
    spec.spec.as_mut().unwrap().workspace = "web".into();
    let err = f
        .cluster
        .create(spec.clone(), "bob", CreateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WorkspaceNotYours { .. }));
    let err = f
        .cluster
        .create(spec, "alice", CreateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WorkspaceInUse { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn an_interrupted_move_leaves_the_workspace_ready_where_it_was() {
    let f = fake_link::cluster();
    f.create_running("web").await;
    f.cluster
        .store()
        .modify_workspace("web", |w| {
            w.state = pb::WorkspaceState::Moving as i32;
            true
        })
        .await
        .unwrap();
    f.cluster.recover_moves().await.unwrap();
    let w = f.ws("web").unwrap();
    assert_eq!(
        (w.state(), w.node.as_str()),
        (pb::WorkspaceState::Ready, NODE)
    );
}
