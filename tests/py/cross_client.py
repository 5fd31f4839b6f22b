"""An independent gRPC client (Python grpcio) checking a running echo_node.

Usage: cross_client.py HOST:PORT

Knows nothing of svckit's protos: it discovers them through server
reflection, builds message classes from the descriptors it gets, then checks
health, calls Echo and Base/Ping. Prints one JSON line with what it saw and
exits non-zero on any mismatch.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ECHO = "svckit.examples.echo.v1.Echo"
BASE = "svckit.base.v1.Base"


def reflect(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**kw):
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kw)]))
        return next(responses)

    services = [s.name for s in ask(list_services="").list_services_response.service]
    pool = descriptor_pool.DescriptorPool()
    added = set()
    for name in (ECHO, BASE):
        files = ask(file_containing_symbol=name).file_descriptor_response.file_descriptor_proto
        # Dependencies come in the same response; add them dependency-first.
        protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in files]
        pending = {p.name: p for p in protos if p.name not in added}
        while pending:
            for fname, proto in list(pending.items()):
                if all(d in added or d not in pending for d in proto.dependency):
                    pool.Add(proto)
                    added.add(fname)
                    del pending[fname]
    return services, pool


def unary(channel, pool, service, method, **fields):
    desc = pool.FindServiceByName(service).FindMethodByName(method)
    request_cls = GetMessageClass(desc.input_type)
    response_cls = GetMessageClass(desc.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    return call(request_cls(**fields), timeout=10)


def main():
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        echo_health = health.Check(health_pb2.HealthCheckRequest(service=ECHO), timeout=10).status
        services, pool = reflect(channel)
        echo = unary(channel, pool, ECHO, "Echo", payload=b"hello from python")
        ping = unary(channel, pool, BASE, "Ping", arg="py")
        seen = {
            "overall": health_pb2.HealthCheckResponse.ServingStatus.Name(overall),
            "echo_health": health_pb2.HealthCheckResponse.ServingStatus.Name(echo_health),
            "services": sorted(services),
            "echo_payload": echo.payload.decode(),
            "echo_host": echo.host,
            "echo_pid": echo.pid,
            "ping": {"service": ping.service, "host": ping.host, "arg": ping.arg},
        }
    print(json.dumps(seen))
    ok = (
        seen["overall"] == "SERVING"
        and seen["echo_health"] == "SERVING"
        and ECHO in services
        and BASE in services
        and "grpc.health.v1.Health" in services
        and seen["echo_payload"] == "hello from python"
        and ping.arg == "py"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
