//! `devctl images push`: images distributed without a registry, through
//! the bus (a JetStream object store, then a flow-controlled pipe to each
//! agent), on two nodes with two real engines (the machine's and a
//! [`SecondEngine`], which starts with no images), real nats-server and
//! TLS. A transfer cut by an agent's kill -9 resumes where it stopped.

use std::{path::Path, process::Command, time::Duration};

use devctl_tests::{IMAGE, SecondEngine, TestCluster, wait_until};
use nix::sys::signal::Signal;

/// An image built on the machine's engine for one test, removed at the
/// end: IMAGE plus a marker file and `payload_mb` MiB of random bytes.
struct TestImage {
    tag: String,
}

impl TestImage {
    fn build(dir: &Path, payload_mb: usize) -> Self {
        // IMAGE is built on the machine's engine by the harness.
        devctl_tests::ensure_prerequisites();
        let tag = format!(
            "devctl-test/pushed:{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let ctx = dir.join(format!("ctx-{payload_mb}"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("marker"), "pushed-ok\n").unwrap();
        let mut payload = vec![0u8; payload_mb << 20];
        for chunk in payload.chunks_mut(16) {
            chunk.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..chunk.len()]);
        }
        std::fs::write(ctx.join("payload"), payload).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {IMAGE}\nCOPY marker payload /\n"),
        )
        .unwrap();
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { tag }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// Whether `images ls --node NODE` lists `tag`.
fn node_lists(c: &TestCluster, node: &str, tag: &str) -> bool {
    let r = c.devctl(&["images", "ls", "--node", node, "-o", "json"]);
    r.stdout.contains(&format!("\"{tag}\""))
}

/// Creates `name` on `node` from `tag` without pulling, and reads the
/// image's marker inside it.
fn run_marker(c: &TestCluster, name: &str, node: &str, tag: &str) -> String {
    c.devctl(&[
        "create", name, "--image", tag, "--node", node, "--pull", "never", "--", "sleep", "600",
    ])
    .ok();
    c.devctl(&["exec", name, "--", "cat", "/marker"])
        .ok()
        .stdout
}

#[test]
fn push_all_runs_on_both_nodes_and_skips_what_is_there() {
    // Declared first, dropped last: the agents end before their engine.
    let engine = SecondEngine::start();
    let scratch = tempfile::tempdir().unwrap();
    // Built before the cluster starts: node a's first image list has it.
    let image = TestImage::build(scratch.path(), 4);
    let tag = image.tag.as_str();
    let mut c = TestCluster::start(&["a"]);
    c.add_node_on("b", &engine, &[]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    wait_until("node a lists the image", Duration::from_secs(20), || {
        node_lists(&c, &a, tag).then_some(())
    });
    assert!(!engine.has_image(tag));

    // From the local engine to every node: a has it, b gets it.
    let got = c
        .devctl(&["images", "push", tag, "--all", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["skipped"], serde_json::json!([a]), "{got}");
    assert_eq!(got["uploaded"], true, "{got}");
    let results = got["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{got}");
    assert_eq!(results[0]["node"], b.as_str());
    assert_eq!(results[0]["error"], "", "{got}");
    assert!(
        results[0]["loaded"].to_string().contains(tag),
        "the engine's report names the image: {got}"
    );
    assert!(engine.has_image(tag), "node b's engine holds the image");
    wait_until("node b lists the image", Duration::from_secs(20), || {
        node_lists(&c, &b, tag).then_some(())
    });
    assert_eq!(run_marker(&c, "pushed-b", &b, tag), "pushed-ok\n");

    // Again: every node has it, nothing is sent or uploaded.
    let got = c
        .devctl(&["images", "push", tag, "--all", "-o", "json"])
        .ok()
        .json();
    let mut skipped: Vec<String> = serde_json::from_value(got["skipped"].clone()).unwrap();
    skipped.sort();
    assert_eq!(skipped, vec![a.clone(), b.clone()], "{got}");
    assert_eq!(got["results"], serde_json::json!([]), "{got}");
    // Forced to b: sent again, from the archive the scheduler stored.
    let got = c
        .devctl(&["images", "push", tag, "--node", &b, "--force", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["uploaded"], false, "stored already: {got}");
    assert_eq!(got["results"][0]["error"], "", "{got}");

    // A docker save archive, to node a once its engine lost the image.
    let archive = scratch.path().join("image.tar");
    let saved = Command::new("docker")
        .args(["save", "-o"])
        .arg(&archive)
        .arg(tag)
        .status()
        .unwrap();
    assert!(saved.success());
    let rmi = Command::new("docker").args(["rmi", tag]).output().unwrap();
    assert!(rmi.status.success(), "{rmi:?}");
    wait_until("node a no longer lists it", Duration::from_secs(20), || {
        (!node_lists(&c, &a, tag)).then_some(())
    });
    let input = archive.to_str().unwrap();
    let out = c
        .devctl(&["images", "push", "--input", input, "--node", &a])
        .ok();
    assert!(
        out.stdout.contains(&format!("{a}\tloaded")),
        "{}",
        out.stdout
    );
    wait_until("node a lists it again", Duration::from_secs(20), || {
        node_lists(&c, &a, tag).then_some(())
    });
    assert_eq!(run_marker(&c, "pushed-a", &a, tag), "pushed-ok\n");

    // Bad input names what is wrong, and nothing is sent.
    let not_archive = scratch.path().join("not.tar");
    std::fs::write(&not_archive, "hello").unwrap();
    let e = c
        .devctl(&[
            "images",
            "push",
            "--input",
            not_archive.to_str().unwrap(),
            "--all",
        ])
        .err();
    assert!(e.contains("not an image archive"), "{e}");
    let e = c
        .devctl(&["images", "push", "devctl-test/no-such-image:1", "--all"])
        .err();
    assert!(e.contains("docker save"), "{e}");
    let e = c
        .devctl(&["images", "push", tag, "--node", "no-such-node"])
        .err();
    assert!(e.contains("no-such-node"), "{e}");

    // The pushes are in the event history.
    let events = c.events(&["--node", &b]);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "EVENT_TYPE_IMAGE_PUSHED" && e["reason"] == "push"),
        "{events:?}"
    );
}

#[test]
fn a_push_cut_by_an_agent_kill_resumes_after_its_restart() {
    let engine = SecondEngine::start();
    let scratch = tempfile::tempdir().unwrap();
    let image = TestImage::build(scratch.path(), 160);
    let tag = image.tag.clone();
    let mut c = TestCluster::start(&["a"]);
    c.add_node_on("b", &engine, &[]).unwrap();
    let b = c.node("b");
    let imports = c.agent_dir("b").join("imports");

    let log = scratch.path().join("push.log");
    let mut push = c.spawn_devctl_as(
        &c.admin_tls(),
        &["images", "push", &tag, "--node", &b],
        log.clone(),
    );
    // Kill node b's agent once part of the archive arrived.
    let part = wait_until(
        "part of the archive on node b",
        Duration::from_secs(120),
        || {
            let entry = std::fs::read_dir(&imports).ok()?.flatten().next()?;
            let len = entry.metadata().ok()?.len();
            (len >= 8 << 20).then_some(entry.path())
        },
    );
    c.agent("b").signal(Signal::SIGKILL);
    c.agent("b").wait_exit(Duration::from_secs(10));
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(held > 0);
    c.start_agent_on("b", &engine, &[]).unwrap();

    let status = push.wait_exit(Duration::from_secs(180));
    let out = push.log();
    assert!(status.success(), "the push completed: {out}");
    // The rest was sent, not the whole archive again.
    let resumed: u64 = out
        .split("resumed at byte ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("the push says where it resumed: {out}"));
    assert!(resumed > 0, "{out}");
    assert!(out.contains(&format!("{b}\tloaded")), "{out}");
    assert!(
        !part.exists(),
        "the received archive is deleted once loaded"
    );
    assert!(engine.has_image(&tag));
    wait_until("node b lists the image", Duration::from_secs(20), || {
        node_lists(&c, &b, &tag).then_some(())
    });
    assert_eq!(run_marker(&c, "resumed", &b, &tag), "pushed-ok\n");
}

#[test]
fn an_archive_over_the_store_cap_or_pushes_off_are_refused_with_the_flag() {
    let scratch = tempfile::tempdir().unwrap();
    devctl_tests::ensure_prerequisites();
    let archive = scratch.path().join("busybox.tar");
    let saved = Command::new("docker")
        .args(["save", "-o"])
        .arg(&archive)
        .arg(IMAGE)
        .status()
        .unwrap();
    assert!(saved.success());
    let input = archive.to_str().unwrap();

    // A cap smaller than the archive: refused before any byte is sent,
    // naming the field and the flag.
    let small = TestCluster::start_opts(&["a"], &[], &["--image-store-size", "64k"]).unwrap();
    let e = small
        .devctl(&["images", "push", "--input", input, "--all", "--force"])
        .err();
    assert!(e.contains("start.size_bytes"), "{e}");
    assert!(e.contains("--image-store-size"), "{e}");
    drop(small);

    // Pushes off: the caller is told why and what to use instead.
    let off = TestCluster::start_opts(&["a"], &[], &["--image-store-size", "0"]).unwrap();
    let e = off
        .devctl(&["images", "push", "--input", input, "--all", "--force"])
        .err();
    assert!(e.contains("pushes are off"), "{e}");
    assert!(
        e.contains("FailedPrecondition") || e.contains("--image-store-size 0"),
        "{e}"
    );
}
