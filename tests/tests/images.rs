//! Images across hosts: two nodes on two real engines (the machine's and a
//! [`SecondEngine`]), real nats-server and TLS. `devctl images ls` shows
//! which image is where, and `create --pull never` only considers nodes
//! holding the image, saying per node why not.

use std::time::Duration;

use devctl_proto::pb;
use devctl_tests::{IMAGE, SecondEngine, TestCluster, wait_until};
use serde_json::Value;
use tonic_types::StatusExt;

/// The (node, tags) pairs of `images ls -o json` holding `tag`.
fn nodes_with(c: &TestCluster, tag: &str) -> Vec<String> {
    let r = c.devctl(&["images", "ls", "-o", "json"]).json();
    let mut nodes: Vec<String> = r["images"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|i| {
            i["image"]["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == tag))
        })
        .map(|i| i["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn images_ls_shows_where_each_image_is_and_pull_never_places_only_there() {
    // Declared first, dropped last: the agents end before their engine.
    let engine = SecondEngine::start();
    let mut c = TestCluster::start(&["a"]);
    c.add_node_on("b", &engine, &[]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));

    // The second engine has no images: IMAGE is on node a only.
    wait_until("node a's images", Duration::from_secs(20), || {
        (nodes_with(&c, IMAGE) == [a.clone()]).then_some(())
    });
    let r = c
        .devctl(&["images", "ls", "--node", &b, "-o", "json"])
        .json();
    assert_eq!(r.get("images"), None, "node b has no images: {r}");
    assert_eq!(r.get("unknownNodes"), None, "node b reported: {r}");
    let one = c
        .devctl(&["images", "ls", "--node", &a, "-o", "json"])
        .json();
    let img = &one["images"][0]["image"];
    assert!(img["id"].as_str().unwrap().starts_with("sha256:"), "{one}");
    assert!(img["sizeBytes"].as_str().unwrap().parse::<i64>().unwrap() > 0);
    assert!(img["created"].is_string());
    // The table, for people.
    let table = c.devctl(&["images", "ls"]).ok().stdout;
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&a) && l.contains(IMAGE)),
        "{table}"
    );
    let e = c.devctl(&["images", "ls", "--node", "nope"]).err();
    assert!(e.contains("nope"), "{e}");

    // Kept in memory only: a restarted scheduler relearns every node's list
    // from the first heartbeats' digests.
    let mut s = c.scheduler.take().unwrap();
    s.signal(nix::sys::signal::Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
    c.start_scheduler().unwrap();
    wait_until(
        "node a's images after a restart",
        Duration::from_secs(30),
        || {
            let r = c.devctl(&["images", "ls", "-o", "json"]);
            let v: Value = serde_json::from_str(&r.stdout).ok()?;
            (v.get("unknownNodes").is_none() && nodes_with(&c, IMAGE) == [a.clone()]).then_some(())
        },
    );

    // --pull never: node b is emptier, but only node a has the image.
    for i in 0..2 {
        let got = c
            .devctl(&[
                "create",
                &format!("never-{i}"),
                "--image",
                IMAGE,
                "--pull",
                "never",
                "-o",
                "json",
            ])
            .json();
        assert_eq!(got["status"]["node"], a.as_str(), "{got}");
    }

    // An image no node has: refused, with each node's reason.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let channel = c.grpc_channel(&c.admin_tls()).await;
        pb::container_service_client::ContainerServiceClient::new(channel)
            .create_container(pb::CreateContainerRequest {
                container: Some(pb::Container {
                    name: "nowhere".into(),
                    spec: Some(pb::ContainerSpec {
                        image: "devctl/nowhere:1".into(),
                        pull_policy: pb::PullPolicy::Never as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let details = status.get_error_details();
    let mut violations: Vec<(String, String)> = details
        .precondition_failure()
        .expect("PreconditionFailure")
        .violations
        .iter()
        .map(|v| (v.subject.clone(), v.description.clone()))
        .collect();
    violations.sort();
    assert_eq!(violations.len(), 2, "{violations:?}");
    for ((node, why), want) in violations.iter().zip([&a, &b]) {
        assert_eq!(node, want);
        assert!(
            why.contains("image devctl/nowhere:1 is not on this node")
                && why.contains(&format!(
                    "devctl images build CONTEXT -t devctl/nowhere:1 --node {want}"
                )),
            "{why}"
        );
    }
    let err = c
        .devctl(&[
            "create",
            "nowhere",
            "--image",
            "devctl/nowhere:1",
            "--pull",
            "never",
        ])
        .err();
    assert!(err.contains(&a) && err.contains(&b), "{err}");
    assert!(
        c.devctl(&["get", "nowhere"]).err().contains("nowhere"),
        "nothing half-made"
    );

    // The image arrives on node b's engine: its next heartbeat says so.
    engine.load_from_main(IMAGE).unwrap();
    wait_until("node b's new image", Duration::from_secs(20), || {
        (nodes_with(&c, IMAGE) == [a.clone(), b.clone()]).then_some(())
    });
    // Now node b, emptier, takes the next one.
    let got: Value = c
        .devctl(&[
            "create", "never-b", "--image", IMAGE, "--pull", "never", "-o", "json",
        ])
        .json();
    assert_eq!(got["status"]["node"], b.as_str(), "{got}");
    assert_eq!(
        engine
            .inspect_by_label(&format!("io.devctl.node={b}"))
            .len(),
        1
    );

    // images rm: admin only.
    let dev = c.issue_cert("dana", "developer");
    let e = c
        .devctl_as(&dev, &["images", "rm", IMAGE, "--node", &b])
        .err();
    assert!(e.contains("PermissionDenied") || e.contains("admin"), "{e}");
    // Refused while a container uses it, as docker rmi.
    let e = c.devctl(&["images", "rm", IMAGE, "--node", &b]).err();
    assert!(
        e.contains("in use on node") && e.contains("FailedPrecondition"),
        "{e}"
    );
    assert!(engine.has_image(IMAGE));
    // Once its container is gone, it goes from node b only.
    c.devctl(&["rm", "--force", "never-b"]).ok();
    let out = c
        .devctl(&["images", "rm", IMAGE, "--node", &b, "-o", "json"])
        .json();
    assert_eq!(out["removals"][0]["node"], b.as_str(), "{out}");
    assert!(!engine.has_image(IMAGE), "gone from node b's engine");
    wait_until(
        "node b's image list without it",
        Duration::from_secs(20),
        || (nodes_with(&c, IMAGE) == [a.clone()]).then_some(()),
    );
    let e = c.devctl(&["images", "rm", IMAGE, "--node", &b]).err();
    assert!(
        e.contains("is not on node") && e.contains("NotFound"),
        "{e}"
    );
}
