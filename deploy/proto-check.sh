#!/usr/bin/env bash
# Lints the devctl.v1 contract (proto/buf.yaml: STANDARD plus every
# COMMENT_* rule) and checks it for breaking changes (FILE rules).
#
#   deploy/proto-check.sh          against every commit that changed
#                                  proto/devctl since devctl.v1 became stable
#   deploy/proto-check.sh REF      against REF only (e.g. `main` on a branch)
#
# devctl.v1 is stable from the commit whose container.proto carries the line
# "// devctl.v1: STABLE" (the spec/status split, the one planned breaking
# change, landed there). Checking HEAD against each stable version, not only
# against HEAD~1, catches a break spread over several commits of one push
# (a field added in one commit and renumbered in the next). Installs buf
# (PyPI buf-bin) when missing. Without history (a shallow clone, the first
# commit, no git checkout) it says so and skips only the breaking check.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/deploy/prereqs.sh"

marker='// devctl.v1: STABLE'
need_buf
cd "$root"
say "buf lint proto"
"$BUF" lint proto

breaking_against() {
  say "buf breaking proto against $1"
  "$BUF" breaking proto --against ".git#ref=$1,subdir=proto"
}

if [ $# -gt 0 ]; then
  git rev-parse --verify --quiet "${1}^{commit}" >/dev/null 2>&1 ||
    die "no commit $1 in this repository to check the proto files against"
  breaking_against "$1"
  exit 0
fi

if ! git rev-parse --verify --quiet "HEAD~1^{commit}" >/dev/null 2>&1; then
  if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
    say "note: shallow clone without HEAD~1: skipping only the proto breaking-change check (git fetch --unshallow to run it)"
  else
    say "note: no HEAD~1 (no git history here): skipping only the proto breaking-change check"
  fi
  exit 0
fi

# The stable versions: every commit up to HEAD that changed proto/devctl,
# newest first, back to the one that declared devctl.v1 stable (HEAD itself
# too: the working tree may have changed since).
checked=0
for c in $(git rev-list HEAD -- proto/devctl); do
  git show "$c:proto/devctl/v1/container.proto" 2>/dev/null | grep -qxF "$marker" || break
  breaking_against "$c"
  checked=$((checked + 1))
done
if [ "$checked" -eq 0 ]; then
  say "note: no stable devctl.v1 before this commit: nothing to check for breaking changes"
else
  say "devctl.v1 keeps its contract with all $checked stable version(s)"
fi
