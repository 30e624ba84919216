//! Benchmark (a `cargo bench` target, harness = false): the
//! baseline an image push through the bus is measured against, `docker save
//! IMG | docker load` from the machine's engine into second engines on the
//! same host, one node and two nodes (one after the other, as one host's
//! disk serves both).
//!
//! `DEVCTL_BENCH_IMAGE` (default `devctl/dev:bookworm`, built by
//! deploy/images/dev/build.sh) must be on the machine's engine.
//!
//!   cargo bench -p devctl-tests --bench images

use std::time::Instant;

use devctl_tests::SecondEngine;

fn main() {
    let image =
        std::env::var("DEVCTL_BENCH_IMAGE").unwrap_or_else(|_| "devctl/dev:bookworm".into());
    let size = std::process::Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Size}}", &image])
        .output()
        .expect("docker image inspect");
    assert!(
        size.status.success(),
        "{image} is not on the engine: build it with deploy/images/dev/build.sh"
    );
    let bytes: f64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap();
    let (one, two) = (SecondEngine::start(), SecondEngine::start());
    let t = Instant::now();
    one.load_from_main(&image).unwrap();
    let single = t.elapsed();
    assert!(one.has_image(&image));
    one.docker(&["rmi", &image]).unwrap();
    let t = Instant::now();
    one.load_from_main(&image).unwrap();
    two.load_from_main(&image).unwrap();
    let both = t.elapsed();
    assert!(one.has_image(&image) && two.has_image(&image));
    let mb = bytes / 1e6;
    println!(
        "{image} ({mb:.0} MB): docker save | docker load, 1 node: {:.1} s ({:.0} MB/s); 2 nodes: {:.1} s",
        single.as_secs_f64(),
        mb / single.as_secs_f64(),
        both.as_secs_f64()
    );
}
