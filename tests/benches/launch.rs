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

/// `runs` interleaved launches (plus one warm-up) of `devctl create` and
/// `docker run -d --init`, each removed before the next.
fn series(c: &TestCluster, runs: usize, tag: &str) -> (Vec<Duration>, Vec<Duration>) {
    let label = format!("devctl-bench={}", c.prefix);
    let (mut devctl, mut docker) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        let name = format!("{tag}{i}");
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
    (devctl, docker)
}

fn report(what: &str, mut devctl: Vec<Duration>, mut docker: Vec<Duration>) {
    let runs = devctl.len();
    let (m1, m2) = (median(&mut devctl), median(&mut docker));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("launch, {what}, {runs} runs each, medians:");
    println!("| devctl create (until running) | {:.1} ms |", ms(m1));
    println!("| docker run -d --init          | {:.1} ms |", ms(m2));
    println!(
        "| ratio                         | {:.3}    |",
        m1.as_secs_f64() / m2.as_secs_f64()
    );
    println!(
        "min/max devctl {:.1}/{:.1} ms, docker {:.1}/{:.1} ms",
        ms(devctl[0]),
        ms(devctl[runs - 1]),
        ms(docker[0]),
        ms(docker[runs - 1])
    );
}

fn main() {
    let runs: usize = std::env::var("DEVCTL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // The agent answers a create once the container has stayed up for
    // --create-settle (1 s by default, so a command that exits at once is
    // not reported running): without it here, the engine path is what is
    // measured.
    let c = TestCluster::start_with(&["bench"], &["--create-settle", "0s"]).expect("cluster");
    // The owner's first container on the node: its network is made with it
    // (and removed with it).
    let (devctl, docker) = series(&c, runs, "first");
    report("owner network made with each container", devctl, docker);
    // Another container of the owner stays: the network exists already.
    c.devctl(&["create", "keeper", "--image", IMAGE]).ok();
    let (devctl, docker) = series(&c, runs, "more");
    report("owner network already there", devctl, docker);
}
