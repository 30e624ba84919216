#!/usr/bin/env python3
"""A devctl API client in Python, generated from proto/ with grpcio-tools.

    pip install grpcio==1.85.1 grpcio-tools==1.85.1
    python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen proto/devctl/v1/*.proto
    PYTHONPATH=gen python docs/examples/python/devctl_client.py \\
        --server 127.0.0.1:7443 --ca ca.pem --token "$DEVCTL_API_TOKEN" ls

Authenticates with an API token (`devctl tokens create`; sent as
`authorization: Bearer ...` over TLS) or with a client certificate
(--cert/--key from `devctl login` or `devctl-scheduler issue-cert`).
Prints JSON; on an RPC error prints `CODE: message` to stderr and exits 2.
"""

import argparse
import json
import sys

import grpc

from devctl.v1 import container_pb2, container_pb2_grpc


def channel(args):
    ca = open(args.ca, "rb").read()
    if args.token:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=ca),
            grpc.access_token_call_credentials(args.token),
        )
    elif args.cert and args.key:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=open(args.key, "rb").read(),
            certificate_chain=open(args.cert, "rb").read(),
        )
    else:
        # TLS without credentials: the server answers UNAUTHENTICATED.
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.secure_channel(args.server, creds)


def add_connection_args(p):
    """The options `channel` reads: --server, --ca and the credentials."""
    p.add_argument("--server", required=True, help="HOST:PORT of the scheduler")
    p.add_argument("--ca", required=True, help="the cluster CA certificate (ca.pem)")
    p.add_argument("--token", help="an API token (dvt_...)")
    p.add_argument("--cert", help="client certificate (cert.pem)")
    p.add_argument("--key", help="its private key (key.pem)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_args(p)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list containers")
    create = sub.add_parser("create", help="create and start a container")
    create.add_argument("name")
    create.add_argument("--image", required=True)
    create.add_argument("--cmd", nargs="+", default=[], help="the command to run")
    args = p.parse_args()

    stub = container_pb2_grpc.ContainerServiceStub(channel(args))
    try:
        if args.command == "ls":
            r = stub.ListContainers(container_pb2.ListContainersRequest(), timeout=30)
            out = [{"name": c.name, "owner": c.owner} for c in r.containers]
        else:
            spec = container_pb2.ContainerSpec(image=args.image, command=args.cmd)
            want = container_pb2.Container(name=args.name, spec=spec)
            c = stub.CreateContainer(container_pb2.CreateContainerRequest(container=want), timeout=60)
            state = container_pb2.ContainerState.Name(c.status.state)
            out = {"name": c.name, "owner": c.owner, "node": c.status.node, "state": state}
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
