//! Image builds and templates, end to end on the real engine: `devctl
//! images build` sends a context (its .dockerignore honoured) to the node
//! asked for, which builds it from the busybox base; a failing build and an
//! oversized context are refused with what to fix.

use std::{fs, path::Path, process::Command, time::Duration};

use devctl_tests::{IMAGE, TestCluster, wait_until};

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

    // The build is in node b's event history, with who asked for it.
    let built = c.events(&["--node", &b]);
    assert!(
        built.iter().any(|e| e["type"] == "EVENT_TYPE_IMAGE_BUILT"
            && e["reason"] == "build"
            && e["actor"] == "admin"
            && e["message"].as_str().is_some_and(|m| m.contains(&tag))),
        "{built:?}"
    );

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

/// A base image with fake `apt-get` and `pip` (no package mirror is
/// reachable here): each records the packages it was asked to install in
/// /installed-apt and /installed-pip, so the template's packages are
/// visible in the container.
fn build_fake_package_base(c: &TestCluster, tag: &str) {
    let ctx = c.scratch().join("base");
    write(
        &ctx,
        "Dockerfile",
        &format!("FROM {IMAGE}\nCOPY apt-get pip /bin/\nRUN chmod 755 /bin/apt-get /bin/pip\n"),
    );
    write(
        &ctx,
        "apt-get",
        "#!/bin/sh\necho \"apt-get $*\" >> /var/log-apt\n[ \"$1\" = install ] || exit 0\nshift\nfor p in \"$@\"; do case \"$p\" in -*) ;; *) echo \"$p\" >> /installed-apt;; esac; done\n",
    );
    write(
        &ctx,
        "pip",
        "#!/bin/sh\n[ \"$1\" = install ] || exit 1\nshift\nfor p in \"$@\"; do case \"$p\" in -*) ;; *) echo \"$p\" >> /installed-pip;; esac; done\n",
    );
    c.devctl(&["images", "build", ctx.to_str().unwrap(), "-t", tag, "--all"])
        .ok();
}

fn exec_out(c: &TestCluster, name: &str, script: &str) -> String {
    c.devctl(&["exec", name, "--", "sh", "-c", script])
        .ok()
        .stdout
}

#[test]
fn create_from_a_template_has_its_packages_env_and_post_create() {
    let c = TestCluster::start(&["a", "b"]);
    let base = format!("devctl-test/{}-base:1", c.prefix);
    let mut images = Images(vec![base.clone()]);
    build_fake_package_base(&c, &base);
    let name = format!("{}-py", c.prefix);
    let template = format!(
        r#"apiVersion: devcontainer/v1
kind: Template
metadata:
  name: {name}
  description: Python-ish tools on busybox
spec:
  base_image: {base}
  packages:
    apt:
      - curl
      - libhdf5-dev=1.10.8
    pip:
      - requests[socks]
      - numpy>=1.26,<3
  environment:
    GREETING: hello
    JUPYTER_PORT: 8888
  volumes:
    - host: ./data
      container: /data
  ports:
    - 8888:8888
  post_create:
    - echo post-create ran > /tmp/post-create.txt
    - echo "post-create says $GREETING"
"#
    );
    let file = c.scratch().join("template.yaml");
    fs::write(&file, &template).unwrap();
    let r = c
        .devctl(&["templates", "apply", "-f", file.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains(&format!("template/{name} created")),
        "{}",
        r.stdout
    );
    let r = c
        .devctl(&["templates", "apply", "-f", file.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
    let t = c.devctl(&["templates", "get", &name, "-o", "json"]).json();
    let image = t["image"].as_str().unwrap().to_string();
    images.0.push(image.clone());
    assert!(
        image.starts_with(&format!("devctl-template/{name}:")),
        "{t}"
    );
    let listed = c.devctl(&["templates", "ls", "-o", "json"]).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == name.as_str()),
        "{listed}"
    );
    let table = c.devctl(&["templates", "ls"]).ok().stdout;
    assert!(table.contains("apt: curl libhdf5-dev=1.10.8"), "{table}");

    // The first container builds the template's image on its node, runs
    // post_create once and shows its output.
    let b = c.node("b");
    let box1 = format!("{}-one", c.prefix);
    let r = c
        .devctl(&["create", &box1, "--template", &name, "--node", &b])
        .ok();
    assert!(r.stdout.contains("post-create says hello"), "{}", r.stdout);
    assert!(r.stderr.contains("post_create [1/2]"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("devctl port-forward {box1} 8888:8888")),
        "{}",
        r.stderr
    );
    let inside = exec_out(
        &c,
        &box1,
        "cat /installed-apt /installed-pip /tmp/post-create.txt; echo \"env=$GREETING/$JUPYTER_PORT\"",
    );
    assert_eq!(
        inside,
        "curl\nlibhdf5-dev=1.10.8\nrequests[socks]\nnumpy>=1.26,<3\npost-create ran\nenv=hello/8888\n"
    );
    // The template's volume `./data` is the container's own named volume
    // at /data.
    let mounts = exec_out(&c, &box1, "grep ' /data ' /proc/mounts | wc -l");
    assert_eq!(mounts.trim(), "1", "/data is a mount");
    let got = c.devctl(&["get", &box1, "-o", "json"]).json();
    assert_eq!(
        got["spec"]["mounts"][0]["volume"],
        format!("{box1}-data").as_str(),
        "{got}"
    );
    // Commands can run as another user (ExecStart.user, as docker exec -u).
    let r = c
        .devctl(&[
            "exec",
            "-u",
            "1234:5678",
            &box1,
            "--",
            "sh",
            "-c",
            "id -u; id -g",
        ])
        .ok();
    assert_eq!(r.stdout, "1234\n5678\n");
    let err = c
        .devctl(&["exec", "-u", "a\u{1b}[2J", &box1, "--", "true"])
        .err();
    assert!(err.contains("start.user"), "{err}");
    let got = c.devctl(&["get", &box1, "-o", "json"]).json();
    assert_eq!(got["spec"]["template"], name.as_str(), "{got}");
    assert_eq!(got["spec"]["image"], image.as_str(), "{got}");

    // The second one reuses the image on that node, and its flags override
    // the template's.
    let box2 = format!("{}-two", c.prefix);
    c.devctl(&[
        "create",
        &box2,
        "--template",
        &name,
        "--node",
        &b,
        "-e",
        "GREETING=bye",
    ])
    .ok();
    assert_eq!(exec_out(&c, &box2, "echo $GREETING"), "bye\n");
    let log = fs::read_to_string(c.scratch().join(format!("agent-{b}.log"))).unwrap();
    assert!(
        log.contains(&format!("the image is present: build skipped tag={image}")),
        "{log}"
    );

    // One build of the template's image on node b in the history (the
    // second create found it there).
    let built: Vec<_> = c
        .events(&["--node", &b])
        .into_iter()
        .filter(|e| {
            e["type"] == "EVENT_TYPE_IMAGE_BUILT"
                && e["reason"] == "template"
                && e["message"].as_str().is_some_and(|m| m.contains(&image))
        })
        .collect();
    assert_eq!(built.len(), 1, "{built:?}");

    // An invalid template: the field and its line, nothing stored.
    let bad = template
        .replace("      - curl\n", "      - \"curl; rm -rf /\"\n")
        .replace(&format!("name: {name}"), &format!("name: {name}-bad"));
    fs::write(&file, &bad).unwrap();
    let err = c
        .devctl(&["templates", "apply", "-f", file.to_str().unwrap()])
        .err();
    assert!(err.contains("spec.packages.apt[0]"), "{err}");
    assert!(err.contains("line 10"), "{err}");
    assert!(err.contains("InvalidArgument"), "{err}");
    let err = c
        .devctl(&["templates", "get", &format!("{name}-bad")])
        .err();
    assert!(err.contains("NotFound"), "{err}");

    // A create from a template that does not exist creates nothing.
    let err = c
        .devctl(&["create", &format!("{}-x", c.prefix), "--template", "nope"])
        .err();
    assert!(err.contains("no template named \"nope\""), "{err}");

    // Applying, deleting and building are audited (who, what, outcome).
    c.devctl(&["templates", "rm", &name]).ok();
    wait_until("the audit entries", Duration::from_secs(10), || {
        let out = c.devctl(&["audit", "-o", "json"]).ok().stdout;
        let entries: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let has = |method: &str, target: &str| {
            entries.iter().any(|e| {
                e["method"].as_str().is_some_and(|m| m.ends_with(method)) && e["target"] == target
            })
        };
        (has("TemplateService/ApplyTemplate", &name)
            && has("TemplateService/DeleteTemplate", &name)
            && has("BuildService/Build", &base))
        .then_some(())
    });
    let err = c.devctl(&["templates", "get", &name]).err();
    assert!(err.contains("NotFound"), "{err}");
}
