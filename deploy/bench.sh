#!/usr/bin/env bash
# Runs devctl's benchmarks on release builds and prints markdown rows for
# docs/benchmarks.md, after a line describing this machine.
#
#   deploy/bench.sh [launch|api|stats|stats-load|placement|ssh|images|graph|all]
#
# stats-load (not in `all`: about 5 minutes, 100 containers) measures what
# devctl's stats cost the engine; DEVCTL_BENCH_SECS sets each window (60).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/deploy/prereqs.sh"
need_cargo; need_docker; need_nats_server; need_image; need_openssh
cd "$root"
cargo build --release --workspace --bins -q
echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), $(free -g | awk '/Mem:/ {print $2}') GiB, Docker $(docker version -f '{{.Server.Version}}'), $(uname -r)"
case "${1:-all}" in
  launch) cargo bench -q -p devctl-tests --bench launch ;;
  api) cargo bench -q -p devctl-tests --bench api ;;
  stats) cargo bench -q -p devctl-tests --bench stats ;;
  stats-load) cargo bench -q -p devctl-tests --bench stats_load ;;
  placement) cargo bench -q -p devctl-tests --bench placement ;;
  ssh) cargo bench -q -p devctl-tests --bench ssh ;;
  images) cargo bench -q -p devctl-tests --bench images ;;
  graph) need_arcadedb; cargo bench -q -p devctl-tests --bench graph ;;
  all) for b in launch api stats placement ssh; do cargo bench -q -p devctl-tests --bench $b; done ;;
  *) echo "usage: $0 [launch|api|stats|stats-load|placement|ssh|images|graph|all]" >&2; exit 2 ;;
esac
