//! Launch benchmark: `devctl create` until the container runs, against
//! `docker run -d` of the same image on the same engine (both as a user runs
//! them: one CLI process per launch). Medians over N runs, interleaved so
//! drift hits both alike.
//!
//!   deploy/bench.sh launch        (N = DEVCTL_BENCH_RUNS, default 20)

use std::{
    process::Command,
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, TestCluster};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().expect("spawn");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn main() {
    let runs: usize = std::env::var("DEVCTL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let c = TestCluster::start(&["bench"]);
    let label = format!("devctl-bench={}", c.prefix);
    let mut devctl = Vec::new();
    let mut docker = Vec::new();
    // One warm-up of each, not counted.
    for i in 0..=runs {
        let name = format!("b{i}");
        let mut cmd = Command::new(devctl_tests::bin("devctl"));
        cmd.args(["create", &name, "--image", IMAGE])
            .env("DEVCTL_SERVER", &c.server)
            .env("DEVCTL_TLS_DIR", c.admin_tls());
        let d1 = timed(cmd);
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--init", "--label", &label, IMAGE]);
        let d2 = timed(cmd);
        if i > 0 {
            devctl.push(d1);
            docker.push(d2);
        }
        c.devctl(&["rm", "--force", &name]).ok();
        devctl_tests::remove_by_label(&label);
    }
    let (m1, m2) = (median(&mut devctl), median(&mut docker));
    println!("launch, {runs} runs each, medians:");
    println!(
        "| devctl create (until running) | {:.1} ms |",
        m1.as_secs_f64() * 1e3
    );
    println!(
        "| docker run -d --init          | {:.1} ms |",
        m2.as_secs_f64() * 1e3
    );
    println!(
        "| ratio                         | {:.3}    |",
        m1.as_secs_f64() / m2.as_secs_f64()
    );
    println!(
        "min/max devctl {:.1}/{:.1} ms, docker {:.1}/{:.1} ms",
        devctl[0].as_secs_f64() * 1e3,
        devctl[runs - 1].as_secs_f64() * 1e3,
        docker[0].as_secs_f64() * 1e3,
        docker[runs - 1].as_secs_f64() * 1e3
    );
}
