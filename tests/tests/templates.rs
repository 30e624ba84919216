//! Image builds and templates, end to end on the real engine: `devctl
//! images build` sends a context (its .dockerignore honoured) to the node
//! asked for, which builds it from the busybox base; a failing build and an
//! oversized context are refused with what to fix.

use std::{fs, path::Path, process::Command};

use devctl_tests::{IMAGE, TestCluster};

/// Removes the images a test tagged, whatever its outcome.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

fn docker_run(image: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "docker run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn images_build_runs_on_the_chosen_node_and_honours_dockerignore() {
    let c = TestCluster::start_opts(&["a", "b"], &[], &["--max-build-context", "256k"])
        .expect("cluster starts");
    let tag = format!("devctl-test/{}:1", c.prefix);
    let bad = format!("devctl-test/{}:bad", c.prefix);
    let _images = Images(vec![tag.clone(), bad.clone()]);
    let ctx = c.scratch().join("ctx");
    write(
        &ctx,
        "Dockerfile",
        &format!(
            "FROM {IMAGE}\nARG GREETING=none\nCOPY . /ctx/\nRUN echo \"$GREETING from the build\" > /built.txt\n"
        ),
    );
    write(&ctx, "hello.txt", "hello from the context\n");
    write(&ctx, "sub/kept.txt", "kept\n");
    write(&ctx, "secret.env", "TOKEN=do-not-send\n");
    write(&ctx, "cache/big.bin", &"x".repeat(300 * 1024));
    write(&ctx, ".dockerignore", "secret.env\ncache\n");

    let b = c.node("b");
    let r = c
        .devctl(&[
            "images",
            "build",
            ctx.to_str().unwrap(),
            "-t",
            &tag,
            "--build-arg",
            "GREETING=hi",
            "--node",
            &b,
        ])
        .ok();
    // The engine's own output came through, then the result.
    assert!(r.stdout.contains("Step 1/"), "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!("built {tag} on node {b}")),
        "{}",
        r.stderr
    );
    // Node b's agent built it; node a's did not.
    let log = |short: &str| {
        fs::read_to_string(c.scratch().join(format!("agent-{}.log", c.node(short))))
            .unwrap_or_default()
    };
    assert!(log("b").contains("build done"), "{}", log("b"));
    assert!(!log("a").contains("build done"), "{}", log("a"));

    let listing = docker_run(
        &tag,
        "cat /built.txt; cat /ctx/hello.txt; ls -a /ctx /ctx/sub",
    );
    assert!(listing.contains("hi from the build"), "{listing}");
    assert!(listing.contains("hello from the context"), "{listing}");
    assert!(listing.contains("kept.txt"), "{listing}");
    assert!(!listing.contains("secret.env"), "{listing}");
    assert!(!listing.contains("cache"), "{listing}");

    // A failing step fails the command, with the engine's reason.
    write(&ctx, "Dockerfile", &format!("FROM {IMAGE}\nRUN exit 7\n"));
    let err = c
        .devctl(&[
            "images",
            "build",
            ctx.to_str().unwrap(),
            "-t",
            &bad,
            "--node",
            &b,
        ])
        .err();
    assert!(err.contains(&format!("failed on node {b}")), "{err}");
    assert!(err.contains("returned a non-zero code: 7"), "{err}");

    // A context over the cluster's limit is refused before it is sent.
    fs::write(ctx.join(".dockerignore"), "secret.env\n").unwrap();
    let err = c
        .devctl(&["images", "build", ctx.to_str().unwrap(), "-t", &bad])
        .err();
    assert!(err.contains("start.context_size"), "{err}");
    assert!(err.contains("--max-build-context"), "{err}");
    assert!(err.contains("InvalidArgument"), "{err}");

    // Both nodes at once (--all), each result reported.
    write(&ctx, "Dockerfile", &format!("FROM {IMAGE}\nRUN true\n"));
    fs::write(ctx.join(".dockerignore"), "secret.env\ncache\n").unwrap();
    let r = c
        .devctl(&[
            "images",
            "build",
            ctx.to_str().unwrap(),
            "-t",
            &tag,
            "--all",
        ])
        .ok();
    for short in ["a", "b"] {
        let node = c.node(short);
        assert!(
            r.stderr.contains(&format!("built {tag} on node {node}")),
            "{}",
            r.stderr
        );
        assert!(
            r.stdout.contains(&format!("[{node}] Step 1/")),
            "{}",
            r.stdout
        );
    }
}
