//! Unit tests of the pull before a create, against
//! [`FakeLink`](super::fake_link)'s scripted agents.

use devctl_proto::container::ContainerExt;
use devctl_proto::pb::{self, AgentErrorCode, ContainerState};

use super::{
    CreateOptions, ErrorKind,
    fake_link::{self, Answer, Kind, refusal, status},
};

fn private(name: &str, policy: pb::PullPolicy) -> pb::Container {
    let mut c = fake_link::spec(name);
    let spec = c.spec.as_mut().unwrap();
    spec.image = "reg.example.com:5000/team/dev:1".into();
    spec.set_pull_policy(policy);
    c
}

fn progress(current: i64, done: bool) -> pb::PullProgress {
    pb::PullProgress {
        status: if done { "done" } else { "Downloading" }.into(),
        current_bytes: current,
        total_bytes: 100,
        layers: 2,
        layers_done: i32::from(done) * 2,
        done,
        pulled: done,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pull_carries_the_stored_credentials_and_reports_progress() {
    let f = fake_link::cluster();
    f.cluster
        .store()
        .put_registry(
            pb::Registry {
                host: "reg.example.com:5000".into(),
                username: "bot".into(),
                ..Default::default()
            },
            "pw".into(),
        )
        .await
        .unwrap();
    f.link
        .pull_reports(vec![progress(10, false), progress(100, true)]);
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Running, None)),
    );
    let c = f
        .cluster
        .create(
            private("web", pb::PullPolicy::Always),
            "alice",
            CreateOptions::default(),
        )
        .await
        .expect("created");
    assert_eq!(c.status().state(), ContainerState::Running);
    let pulls = f.link.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].policy(), pb::PullPolicy::Always);
    let auth = pulls[0].auth.clone().expect("credentials sent");
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("bot", "pw")
    );
    let types: Vec<_> = f
        .link
        .events()
        .iter()
        .map(|e| e.r#type())
        .filter(|t| matches!(t, pb::EventType::ImagePulling | pb::EventType::ImagePulled))
        .collect();
    assert_eq!(
        types,
        [pb::EventType::ImagePulling, pb::EventType::ImagePulled]
    );
    let first = &f.link.events()[0].message;
    assert!(first.contains("of 2 layers"), "{first}");
}

#[tokio::test]
async fn a_refused_pull_leaves_no_record_and_creates_nothing() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Pull,
        Answer::Reply(refusal(
            AgentErrorCode::RegistryAuthFailed,
            "registry reg.example.com:5000 refused",
        )),
    );
    let e = f
        .cluster
        .create(
            private("web", pb::PullPolicy::Missing),
            "alice",
            CreateOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::RegistryAuthFailed { host, .. } if host == "reg.example.com:5000"),
        "{e:?}"
    );
    assert!(f.cluster.store().container("web").unwrap().is_none());
    assert!(f.link.kinds().is_empty(), "{:?}", f.link.kinds());
    // No credentials were stored: the pull went anonymous.
    assert!(f.link.pulls()[0].auth.is_none());
}

#[tokio::test]
async fn a_pull_that_fails_while_it_runs_leaves_no_record() {
    let f = fake_link::cluster();
    let mut failed = progress(5, true);
    failed.pulled = false;
    failed.error = Some(pb::AgentError {
        code: AgentErrorCode::RegistryUnreachable as i32,
        message: "connection refused".into(),
    });
    f.link.pull_reports(vec![progress(5, false), failed]);
    let e = f
        .cluster
        .create(
            private("web", pb::PullPolicy::Missing),
            "alice",
            CreateOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::RegistryUnreachable { .. }),
        "{e:?}"
    );
    assert!(f.cluster.store().container("web").unwrap().is_none());
    assert!(f.link.kinds().is_empty());
}

#[tokio::test]
async fn policy_never_pulls_nothing() {
    let f = fake_link::cluster();
    // Placement takes only a node that holds the image: node-1 does.
    f.cluster.shared.images.fetched(
        "node-1",
        Some(pb::ImageList {
            digest: "d1".into(),
            images: vec![pb::Image {
                tags: vec!["reg.example.com:5000/team/dev:1".into()],
                ..Default::default()
            }],
        }),
    );
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Running, None)),
    );
    f.cluster
        .create(
            private("web", pb::PullPolicy::Never),
            "alice",
            CreateOptions::default(),
        )
        .await
        .expect("created");
    assert!(f.link.pulls().is_empty());
    assert_eq!(f.link.kinds(), [Kind::Create]);
}

#[tokio::test]
async fn an_agent_that_cannot_pull_is_said_to_be_too_old() {
    let f = fake_link::cluster();
    f.link.answer(
        Kind::Pull,
        Answer::Reply(refusal(AgentErrorCode::BadCommand, "no command")),
    );
    let e = f
        .cluster
        .create(
            private("web", pb::PullPolicy::Missing),
            "alice",
            CreateOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::AgentTooOld { .. }), "{e:?}");
    assert!(e.to_string().contains("--pull never"), "{e}");
    assert!(f.cluster.store().container("web").unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pull_longer_than_the_command_deadline_goes_on_while_it_reports() {
    let f = fake_link::cluster();
    let deadline = f.cluster.shared.settings.command_timeout;
    // Five reports 20 s apart: 100 s, beyond the command deadline, each
    // within the silence limit.
    f.link.pull_pace(std::time::Duration::from_secs(20));
    f.link.pull_reports(vec![
        progress(10, false),
        progress(30, false),
        progress(60, false),
        progress(90, false),
        progress(100, true),
    ]);
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Running, None)),
    );
    let started = tokio::time::Instant::now();
    f.cluster
        .create(
            private("web", pb::PullPolicy::Always),
            "alice",
            CreateOptions::default(),
        )
        .await
        .expect("created after a long pull");
    assert!(started.elapsed() > deadline * 3, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_pull_that_falls_silent_fails_and_leaves_no_record() {
    let f = fake_link::cluster();
    f.link.pull_pace(super::registry::PULL_SILENCE * 2);
    f.link.pull_reports(vec![progress(100, true)]);
    let e = f
        .cluster
        .create(
            private("web", pb::PullPolicy::Always),
            "alice",
            CreateOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AgentUnreachable { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("stopped reporting progress"), "{e}");
    assert!(f.cluster.store().container("web").unwrap().is_none());
    assert!(f.link.kinds().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_inventory_sync_does_not_wait_for_a_pull() {
    let f = fake_link::cluster();
    f.link.pull_pace(std::time::Duration::from_secs(20));
    f.link
        .pull_reports(vec![progress(10, false), progress(100, true)]);
    f.link.answer(
        Kind::Create,
        Answer::Reply(status(ContainerState::Running, None)),
    );
    let cluster = f.cluster.clone();
    let create = tokio::spawn(async move {
        cluster
            .create(
                private("web", pb::PullPolicy::Always),
                "alice",
                CreateOptions::default(),
            )
            .await
    });
    // The record is there, PENDING, while its image is pulled.
    let pending = loop {
        if let Some(c) = f.cluster.store().container("web").unwrap() {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(pending.status().state(), ContainerState::Pending);
    let started = tokio::time::Instant::now();
    f.cluster
        .sync_inventory(fake_link::NODE)
        .await
        .expect("synced");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the sync waited for the pull: {:?}",
        started.elapsed()
    );
    // Neither failed nor touched by the sync.
    let c = f.cluster.store().container("web").unwrap().unwrap();
    assert_eq!(c.status().state(), ContainerState::Pending);
    let c = create.await.unwrap().expect("created");
    assert_eq!(c.status().state(), ContainerState::Running);
}
