"""The echo API's Python stubs, generated at start by grpcio-tools from
PROTO_ROOT/examples/echo/v1/echo.proto: nothing of svckit runs in the
Python clients."""

import importlib
import os
import sys
import tempfile

from grpc_tools import protoc


def stubs(proto_root):
    """(echo_pb2, echo_pb2_grpc), generated into a fresh directory."""
    out = tempfile.mkdtemp(prefix="echo-stubs-")
    rel = "examples/echo/v1/echo.proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{proto_root}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_root, rel),
        ]
    )
    if code != 0:
        sys.exit(f"grpc_tools.protoc failed on {rel}: {code}")
    sys.path.insert(0, out)
    pb = importlib.import_module("examples.echo.v1.echo_pb2")
    rpc = importlib.import_module("examples.echo.v1.echo_pb2_grpc")
    return pb, rpc
