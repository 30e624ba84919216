//! `devctl up` on docs/examples/devcontainer-sample, end to end: the image
//! built from its Dockerfile, the project's files in the workspace folder,
//! containerEnv and remoteEnv set, the lifecycle commands' output shown,
//! unsupported properties named; a second `up` reuses the container.

use std::process::Command;

use devctl_tests::{TestCluster, repo_root};

fn remove_images(reference: &str) {
    let out = Command::new("docker")
        .args([
            "images",
            "-q",
            "--filter",
            &format!("reference={reference}"),
        ])
        .output()
        .expect("docker images");
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("docker").args(["rmi", "-f", id]).output();
    }
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_images(&self.0);
    }
}

#[test]
fn up_builds_copies_and_runs_the_lifecycle_of_the_sample() {
    let c = TestCluster::start(&["a", "b"]);
    let sample = repo_root().join("docs/examples/devcontainer-sample");
    let name = format!("{}-sample", c.prefix);
    let _images = Cleanup(format!("devctl-devcontainer/{name}"));
    let b = c.node("b");
    let r = c
        .devctl(&[
            "up",
            sample.to_str().unwrap(),
            "--name",
            &name,
            "--node",
            &b,
        ])
        .ok();
    let all = format!("{}{}", r.stdout, r.stderr);
    // Unsupported properties are named, not silently dropped.
    assert!(
        all.contains("warning: not supported, ignored: features"),
        "{all}"
    );
    // The image was built from the sample's Dockerfile with its args.
    assert!(all.contains("Step 1/"), "{all}");
    // postCreateCommand ran in the workspace folder, among the copied files.
    assert!(
        all.contains("post-create in /workspaces/devcontainer-sample: hello.sh"),
        "{all}"
    );
    assert!(all.contains("tool 1.2.3"), "{all}");
    assert!(
        all.contains("post-start: hello from /workspaces/devcontainer-sample"),
        "{all}"
    );
    assert!(all.contains(&format!("ssh {name}.devctl")), "{all}");
    assert!(
        all.contains(&format!("devctl port-forward {name} 8080:8080")),
        "{all}"
    );

    let got = c.devctl(&["get", &name, "-o", "json"]).json();
    assert_eq!(got["status"]["state"], "CONTAINER_STATE_RUNNING", "{got}");
    assert_eq!(got["status"]["node"], b.as_str(), "{got}");
    assert_eq!(got["spec"]["resources"]["milliCpus"], "1000", "{got}");
    let inside = c
        .devctl(&[
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "cd /workspaces/devcontainer-sample && ls -a . src && sh src/hello.sh && echo \"$PROJECT/$SAMPLE_MODE\"",
        ])
        .ok()
        .stdout;
    for want in [
        "README.md",
        ".devcontainer",
        "hello.sh",
        "hello from the sample project",
        "devcontainer-sample/dev",
    ] {
        assert!(inside.contains(want), "{want} missing: {inside}");
    }
    // The project is in the container's workspace volume, mounted at the
    // workspace folder; the devcontainer's `mounts` volume is mounted too.
    let ws = c.devctl(&["workspaces", "get", &name, "-o", "json"]).json();
    assert_eq!(ws["node"], b.as_str(), "{ws}");
    assert_eq!(
        got["spec"]["workspacePath"], "/workspaces/devcontainer-sample",
        "{got}"
    );
    let mounts = c
        .devctl(&["exec", &name, "--", "cat", "/proc/mounts"])
        .ok()
        .stdout;
    for target in [" /workspaces/devcontainer-sample ", " /cache "] {
        assert!(mounts.contains(target), "{target} is not a mount: {mounts}");
    }

    // Again: the same container, no second post-create.
    let r = c
        .devctl(&["up", sample.to_str().unwrap(), "--name", &name])
        .ok();
    let again = format!("{}{}", r.stdout, r.stderr);
    assert!(
        again.contains(&format!("reusing container {name}")),
        "{again}"
    );
    assert!(!again.contains("post-create in"), "{again}");
    assert_eq!(c.engine_names(), vec![name.clone()]);

    // A container of that name from another project is not taken over.
    let other = c.scratch().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join(".devcontainer.json"),
        "{ \"image\": \"devctl/busybox:latest\" }",
    )
    .unwrap();
    let err = c
        .devctl(&["up", other.to_str().unwrap(), "--name", &name])
        .err();
    assert!(err.contains("was not made from"), "{err}");
}
