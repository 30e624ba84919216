#!/usr/bin/env bash
# Lints the devctl.v1 contract (proto/buf.yaml: STANDARD plus every
# COMMENT_* rule) and checks it for breaking changes (FILE rules) against a
# git ref: HEAD~1 by default (CI runs this on main, so: the previous commit
# of main), or the ref given, e.g. `deploy/proto-check.sh main` on a branch.
# Installs buf (PyPI buf-bin) when missing. When HEAD~1 is not there (a
# shallow clone, the first commit, no git checkout) it says so and skips only
# the breaking check; a ref given as argument must exist.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/deploy/prereqs.sh"

against=${1:-HEAD~1}
need_buf
cd "$root"
say "buf lint proto"
"$BUF" lint proto
if ! git rev-parse --verify --quiet "${against}^{commit}" >/dev/null 2>&1; then
  [ $# -eq 0 ] || die "no commit ${against} in this repository to check the proto files against"
  if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
    say "note: shallow clone without HEAD~1: skipping only the proto breaking-change check (git fetch --deepen=1 to run it)"
  else
    say "note: no HEAD~1 (no git history here): skipping only the proto breaking-change check"
  fi
  exit 0
fi
say "buf breaking proto against ${against}"
"$BUF" breaking proto --against ".git#ref=${against},subdir=proto"
