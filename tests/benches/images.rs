//! Benchmark (a `cargo bench` target, harness = false): an image into two
//! nodes' engines without a registry, `devctl images push --all` through
//! the bus against its peer `docker save IMG | docker load` into each
//! engine, on the same host, in one run.
//!
//! The nodes are two second engines ([`SecondEngine`]), and a node on the
//! machine's engine (which holds the image, so the push skips it). The
//! image is built here: the test image plus 250 MB of random bytes (no
//! compression helps either side); `DEVCTL_BENCH_IMAGE` names another one
//! on the machine's engine instead.
//!
//! Measured, each from the CLI's start to its exit:
//! - `docker save | docker load` into engine one, then into engine two;
//! - `devctl images push IMG --all` (docker save, SHA-256, upload into the
//!   object store, both transfers and loads at once);
//! - the same with `--force` once the images are removed: the scheduler
//!   holds the archive, nothing is uploaded.
//!
//!   deploy/bench.sh images      (release binaries)

use std::{
    process::Command,
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, SecondEngine, TestCluster, ensure_prerequisites, wait_until};

/// Builds the benchmark image: IMAGE plus `mb` MB of random bytes.
fn build_image(mb: usize) -> String {
    ensure_prerequisites();
    let tag = "devctl-bench/push:250m".to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut payload = vec![0u8; mb * 1_000_000];
    for chunk in payload.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..chunk.len()]);
    }
    std::fs::write(dir.path().join("payload"), payload).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY payload /\n"),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tag
}

fn image_bytes(image: &str) -> f64 {
    let size = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Size}}", image])
        .output()
        .expect("docker image inspect");
    assert!(size.status.success(), "{image} is not on the engine");
    String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn main() {
    let built = std::env::var("DEVCTL_BENCH_IMAGE").is_err();
    let image = std::env::var("DEVCTL_BENCH_IMAGE").unwrap_or_else(|_| build_image(250));
    let mb = image_bytes(&image) / 1e6;
    let (one, two) = (SecondEngine::start(), SecondEngine::start());

    // The peer: docker save | docker load into each engine in turn.
    let t = Instant::now();
    one.load_from_main(&image).unwrap();
    two.load_from_main(&image).unwrap();
    let peer = t.elapsed();
    assert!(one.has_image(&image) && two.has_image(&image));
    one.docker(&["rmi", &image]).unwrap();
    two.docker(&["rmi", &image]).unwrap();

    // The push: a cluster with a node on each engine.
    let mut c = TestCluster::start(&["a"]);
    c.add_node_on("b", &one, &[]).unwrap();
    c.add_node_on("d", &two, &[]).unwrap();
    let t = Instant::now();
    let first = c.devctl(&["images", "push", &image, "--all"]).ok();
    let push = t.elapsed();
    assert!(one.has_image(&image) && two.has_image(&image));
    assert_eq!(
        first.stdout.matches("\tloaded ").count(),
        2,
        "{}",
        first.stdout
    );

    // Again, the archive stored: removed from both engines (and the
    // scheduler told so by their agents), pushed again: no upload.
    one.docker(&["rmi", &image]).unwrap();
    two.docker(&["rmi", &image]).unwrap();
    let (b, d) = (c.node("b"), c.node("d"));
    wait_until(
        "the nodes report the removal",
        Duration::from_secs(30),
        || {
            let r = c.devctl(&["images", "ls", "-o", "json"]).json();
            let holders: Vec<&str> = r["images"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|i| i["image"]["tags"].to_string().contains(&image))
                .filter_map(|i| i["node"].as_str())
                .collect();
            (!holders.contains(&b.as_str()) && !holders.contains(&d.as_str())).then_some(())
        },
    );
    let t = Instant::now();
    let again = c
        .devctl(&["images", "push", &image, "--all", "-o", "json"])
        .ok()
        .json();
    let stored = t.elapsed();
    assert_eq!(again["uploaded"], false, "{again}");
    assert_eq!(again["results"].as_array().unwrap().len(), 2, "{again}");

    println!("{image} ({mb:.0} MB as the engine counts it), into two nodes' engines on this host:");
    let row = |what: &str, d: Duration| {
        println!(
            "  {what}: {:.1} s ({:.0} MB/s over both nodes)",
            d.as_secs_f64(),
            2.0 * mb / d.as_secs_f64()
        )
    };
    row(
        "docker save | docker load, one engine after the other",
        peer,
    );
    row(
        "devctl images push --all (save, upload, both nodes at once)",
        push,
    );
    row("devctl images push --all again, the archive stored", stored);
    if built {
        let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
    }
}
