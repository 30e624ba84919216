#!/usr/bin/env python3
"""Hostile input through a client generated from proto/ (grpcio-tools).

Sends oversized and malformed requests to every service and checks each is
refused with the right status code and a message naming the field. Prints
one JSON line per case; exits 1 if any case got something else.

    PYTHONPATH=gen hostile_input.py --server HOST:PORT --ca ca.pem \\
        --cert cert.pem --key key.pem --running NAME
"""

import argparse
import json
import sys

import grpc

from devctl.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    container_pb2,
    container_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    exec_pb2,
    exec_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)

MIB = 1024 * 1024
IMAGE = "devctl/busybox:latest"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOO_BIG = (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def spec(**kw):
    c = container_pb2.Container(name=kw.pop("name", "hostile"))
    s = c.spec
    s.image = kw.pop("image", IMAGE)
    for k, v in kw.pop("env", {}).items():
        s.env[k] = v
    for k, v in kw.pop("labels", {}).items():
        s.labels[k] = v
    for k, v in kw.pop("constraints", {}).items():
        s.constraints[k] = v
    s.command.extend(kw.pop("command", []))
    if "resources" in kw:
        s.resources.CopyFrom(container_pb2.Resources(**kw.pop("resources")))
    if "health_check" in kw:
        s.health_check.CopyFrom(container_pb2.HealthCheck(**kw.pop("health_check")))
    assert not kw, kw
    return container_pb2.CreateContainerRequest(container=c)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--running", required=True, help="a running container of the caller")
    a = p.parse_args()
    ca = open(a.ca, "rb").read()
    options = [("grpc.max_send_message_length", 64 * MIB)]
    authed = grpc.secure_channel(
        a.server,
        grpc.ssl_channel_credentials(ca, open(a.key, "rb").read(), open(a.cert, "rb").read()),
        options=options,
    )
    anonymous = grpc.secure_channel(a.server, grpc.ssl_channel_credentials(ca), options=options)

    containers = container_pb2_grpc.ContainerServiceStub(authed)
    stats = stats_pb2_grpc.StatsServiceStub(authed)
    events = events_pb2_grpc.EventServiceStub(authed)
    logs = logs_pb2_grpc.LogServiceStub(authed)
    execs = exec_pb2_grpc.ExecServiceStub(authed)
    tokens = access_pb2_grpc.TokenServiceStub(authed)
    audit = audit_pb2_grpc.AuditServiceStub(authed)
    enroll = access_pb2_grpc.EnrollServiceStub(anonymous)

    def first(stream):
        for item in stream:
            return item

    def exec_start(**kw):
        start = exec_pb2.ExecStart(name=a.running, command=kw.pop("command", ["true"]), **kw)
        return first(execs.Exec(iter([exec_pb2.ExecInput(start=start)]), timeout=30))

    # (case, call, expected codes, text the message must hold)
    cases = [
        ("env value of 1 MiB", lambda: containers.CreateContainer(spec(env={"BIG": "x" * MIB})), INVALID, 'container.spec.env["BIG"]'),
        ("env adding up past 256 KiB", lambda: containers.CreateContainer(spec(env={f"V{i}": "x" * 60000 for i in range(5)})), INVALID, "256 KiB"),
        ("10,000 labels", lambda: containers.CreateContainer(spec(labels={f"l{i}": "x" for i in range(10000)})), INVALID, "container.spec.labels"),
        ("100,000 command arguments", lambda: containers.CreateContainer(spec(command=["x"] * 100000)), INVALID, "container.spec.command"),
        ("2,000 env variables", lambda: containers.CreateContainer(spec(env={f"V{i}": "" for i in range(2000)})), INVALID, "container.spec.env"),
        ("label key of 64 characters", lambda: containers.CreateContainer(spec(labels={"a" * 64: "x"})), INVALID, "container.spec.labels"),
        ("label value with a space", lambda: containers.CreateContainer(spec(labels={"team": "a b"})), INVALID, 'container.spec.labels["team"]'),
        ("label value of 64 characters", lambda: containers.CreateContainer(spec(labels={"team": "a" * 64})), INVALID, 'container.spec.labels["team"]'),
        ("constraint with a bad key", lambda: containers.CreateContainer(spec(constraints={"-zone": "eu"})), INVALID, "container.spec.constraints"),
        ("100 constraints", lambda: containers.CreateContainer(spec(constraints={f"k{i}": "v" for i in range(100)})), INVALID, "container.spec.constraints"),
        ("env name with '='", lambda: containers.CreateContainer(spec(env={"A=B": "x"})), INVALID, "container.spec.env"),
        ("env name of 1000 characters", lambda: containers.CreateContainer(spec(env={"A" * 1000: "x"})), INVALID, "container.spec.env"),
        ("NUL in a command argument", lambda: containers.CreateContainer(spec(command=["sh", "a\0b"])), INVALID, "container.spec.command"),
        ("name with capitals", lambda: containers.CreateContainer(spec(name="Bad_Name")), INVALID, "container.name"),
        ("name of 1000 characters", lambda: containers.CreateContainer(spec(name="a" * 1000)), INVALID, "container.name"),
        ("missing image", lambda: containers.CreateContainer(spec(image="")), INVALID, "container.spec.image"),
        ("image of 1000 characters", lambda: containers.CreateContainer(spec(image="a" * 1000)), INVALID, "container.spec.image"),
        ("image with a newline", lambda: containers.CreateContainer(spec(image="busybox\n")), INVALID, "container.spec.image"),
        ("CPU limit of 2^62", lambda: containers.CreateContainer(spec(resources={"milli_cpus": 2**62})), INVALID, "container.spec.resources.milli_cpus"),
        ("negative memory", lambda: containers.CreateContainer(spec(resources={"memory_bytes": -1})), INVALID, "container.spec.resources.memory_bytes"),
        ("memory of 2^62 bytes", lambda: containers.CreateContainer(spec(resources={"memory_bytes": 2**62})), INVALID, "container.spec.resources.memory_bytes"),
        ("health interval of 2^31-1 s", lambda: containers.CreateContainer(spec(health_check={"command": ["true"], "interval_seconds": 2**31 - 1})), INVALID, "container.spec.health_check.interval_seconds"),
        ("health check of 10,000 arguments", lambda: containers.CreateContainer(spec(health_check={"command": ["true"] * 10000})), INVALID, "container.spec.health_check.command"),
        ("request id of 1000 characters", lambda: containers.CreateContainer(container_pb2.CreateContainerRequest(container=spec().container, request_id="r" * 1000)), INVALID, "request_id"),
        ("a 5 MiB message", lambda: containers.CreateContainer(spec(env={f"V{i}": "x" * MIB for i in range(5)})), TOO_BIG, ""),
        ("get by a name of 10,000 characters", lambda: containers.GetContainer(container_pb2.GetContainerRequest(name="a" * 10000)), INVALID, "name"),
        ("stop by a malformed name", lambda: containers.StopContainer(container_pb2.StopContainerRequest(name="../etc")), INVALID, "name"),
        ("list with a page token of 1000 characters", lambda: containers.ListContainers(container_pb2.ListContainersRequest(page_token="x" * 1000)), INVALID, "page_token"),
        ("list with a negative page size", lambda: containers.ListContainers(container_pb2.ListContainersRequest(page_size=-1)), INVALID, "page_size"),
        ("list by a malformed node", lambda: containers.ListContainers(container_pb2.ListContainersRequest(node="a b")), INVALID, "node"),
        ("stats for 2,000 names", lambda: stats.GetStats(stats_pb2.GetStatsRequest(names=[f"c{i}" for i in range(2000)])), INVALID, "names"),
        ("stats for a malformed name", lambda: stats.GetStats(stats_pb2.GetStatsRequest(names=["Bad Name"])), INVALID, "names"),
        ("watch stats for 2,000 names", lambda: first(stats.WatchStats(stats_pb2.WatchStatsRequest(names=[f"c{i}" for i in range(2000)]), timeout=30)), INVALID, "names"),
        ("events of a malformed container", lambda: first(events.WatchEvents(events_pb2.WatchEventsRequest(container="x" * 500), timeout=30)), INVALID, "container"),
        ("logs with a negative tail", lambda: first(logs.StreamLogs(logs_pb2.StreamLogsRequest(name=a.running, tail=-5), timeout=30)), INVALID, "tail"),
        ("exec of 10,000 arguments", lambda: exec_start(command=["x"] * 10000), INVALID, "start.command"),
        ("exec with 200 KiB x 2 of env", lambda: exec_start(env=["A=" + "x" * 200000, "B=" + "x" * 200000]), INVALID, "start"),
        ("exec with a workdir of 10,000 characters", lambda: exec_start(workdir="/" + "a" * 10000), INVALID, "start.workdir"),
        ("exec with a terminal of 100,000 rows", lambda: exec_start(tty=True, size=exec_pb2.TerminalSize(rows=100000, cols=80)), INVALID, "start.size.rows"),
        ("token with a malformed name", lambda: tokens.CreateToken(access_pb2.CreateTokenRequest(name="x" * 300)), INVALID, "name"),
        ("audit of a malformed identity", lambda: first(audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(identity="x" * 300), timeout=30)), INVALID, "identity"),
        ("join with a name of 900 KiB", lambda: enroll.Join(access_pb2.JoinRequest(token="dvj_bogus", name="n" * 900 * 1024)), INVALID, "name"),
        ("join with a token of 100 KiB", lambda: enroll.Join(access_pb2.JoinRequest(token="t" * 100 * 1024, name="ok")), INVALID, "token"),
        ("join with a CSR of 1 MiB", lambda: enroll.Join(access_pb2.JoinRequest(token="dvj_bogus", name="ok", csr_pem="x" * MIB)), (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED), ""),
    ]
    failed = 0
    for case, call, want, text in cases:
        want = want if isinstance(want, tuple) else (want,)
        try:
            call()
            got, details = "OK", ""
        except grpc.RpcError as e:
            got, details = e.code().name, e.details() or ""
        ok = got in [w.name for w in want] and text in details
        failed += not ok
        print(json.dumps({"case": case, "ok": ok, "code": got, "details": details[:300]}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
