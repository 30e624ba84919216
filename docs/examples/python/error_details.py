#!/usr/bin/env python3
"""Telling devctl's refusals apart by their details, not their text.

    pip install grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-status==1.85.1 googleapis-common-protos
    python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen proto/devctl/v1/*.proto
    PYTHONPATH=gen python docs/examples/python/error_details.py \\
        --server 127.0.0.1:7443 --ca ca.pem --cert cert.pem --key key.pem \\
        create web-1 --image devctl/busybox:latest --cpus 64

Every refusal from the scheduler carries, besides its code and message,
`grpc-status-details-bin`: a google.rpc.Status whose details always hold an
ErrorInfo (domain "devctl.dev", a stable `reason` such as QUOTA_EXCEEDED,
NO_CAPACITY or RATE_LIMITED, and metadata), plus RetryInfo for rate limits,
QuotaFailure for quotas and PreconditionFailure (one violation per node)
when no node can take a container. docs/errors.md lists the reasons.

Prints one JSON object per call: the result, or on an RPC error what the
details say ({"code", "reason", "metadata", ...}); exits 2 on an error.
`ls --repeat N` makes up to N calls and stops at the first that is not
UNAUTHENTICATED (so, without credentials, it shows the per-address rate
limit). Connects as devctl_client.py (beside it) does.
"""

import argparse
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from devctl.v1 import container_pb2, container_pb2_grpc
from devctl_client import add_connection_args, channel


def explain(error):
    """What a failed call's details say, as a dict."""
    out = {"code": error.code().name, "message": error.details()}
    status = rpc_status.from_call(error)
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out["reason"] = info.reason
            out["domain"] = info.domain
            out["metadata"] = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            out["retry_after_ms"] = retry.retry_delay.ToMilliseconds()
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            out["quota"] = [
                {"subject": v.subject, "description": v.description} for v in quota.violations
            ]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pre = error_details_pb2.PreconditionFailure()
            detail.Unpack(pre)
            out["preconditions"] = [
                {"type": v.type, "subject": v.subject, "description": v.description}
                for v in pre.violations
            ]
    return out


def advice(e):
    """What a client would do about it: decided by the reason alone."""
    reason = e.get("reason")
    if reason == "RATE_LIMITED":
        return f"slow down: retry in {e.get('retry_after_ms')} ms"
    if reason == "QUOTA_EXCEEDED":
        q = e["quota"][0]
        return f"over the quota of {q['subject']}: remove a container or ask for more"
    if reason == "NO_CAPACITY":
        nodes = ", ".join(f"{v['subject']} ({v['description']})" for v in e["preconditions"])
        return f"the cluster is full right now: {nodes}"
    return f"{e['code']}: {e['message']}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_args(p)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list containers")
    ls.add_argument("--repeat", type=int, default=1, help="calls to make at most")
    create = sub.add_parser("create", help="create and start a container")
    create.add_argument("name")
    create.add_argument("--image", required=True)
    create.add_argument("--cpus", type=float, default=0, help="CPUs to reserve")
    create.add_argument("--dry-run", action="store_true", help="only decide the placement")
    args = p.parse_args()

    stub = container_pb2_grpc.ContainerServiceStub(channel(args))
    try:
        if args.command == "ls":
            for i in range(args.repeat):
                try:
                    r = stub.ListContainers(container_pb2.ListContainersRequest(), timeout=30)
                    break
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAUTHENTICATED or i + 1 == args.repeat:
                        raise
            out = {"containers": [c.name for c in r.containers]}
        else:
            spec = container_pb2.ContainerSpec(
                image=args.image,
                resources=container_pb2.Resources(milli_cpus=int(args.cpus * 1000)),
            )
            want = container_pb2.Container(name=args.name, spec=spec)
            req = container_pb2.CreateContainerRequest(container=want, dry_run=args.dry_run)
            c = stub.CreateContainer(req, timeout=60)
            out = {"name": c.name, "node": c.status.node}
    except grpc.RpcError as e:
        err = explain(e)
        err["advice"] = advice(err)
        print(json.dumps(err))
        sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
