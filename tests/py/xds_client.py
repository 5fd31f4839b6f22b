"""An independent xDS client (Python grpcio's built-in xds resolver) calling
`xds:///echo` through a control plane named by GRPC_XDS_BOOTSTRAP.

Usage: xds_client.py PROTO_ROOT   (XDS_CREDENTIALS=1: xDS credentials;
                                  XDS_TOPIC: another topic than echo)

Stubs are generated at start by grpcio-tools from
PROTO_ROOT/examples/echo/v1/echo.proto: nothing of svckit runs here. Once the
channel is up it prints {"ready": true}, then answers one JSON line per
command read from stdin:

  calls N [TOPIC]
              N calls one after the other, to xds:///echo or to TOPIC (on a
              channel of its own, kept): {"hosts": {host: n}, "errors": [..]}
  start       calls in a loop on 2 threads until `stop`
  take        what the loop saw since the last take, with the wall-clock
              time each host answered first: {"hosts", "errors", "first": {host: t}}
  stop        stops the loop, then as `take`
  keyed HEADER K N
              N calls for each of K keys (key-0 … key-K-1), each with
              request header HEADER set to its key: {"keys": {key: {host: n}},
              "errors": [..]}
  other TOPIC one call to xds:///TOPIC on a channel of its own, waiting for
              the channel as a caller does: {"code": "OK" or the status
              code's name, "details": ..., "seconds": time to the outcome}
"""

import json
import os
import sys
import threading
import time

import grpc
import grpc.experimental
from echo_stubs import stubs

TARGET = "xds:///" + os.environ.get("XDS_TOPIC", "echo")
# With XDS_CREDENTIALS=1 channels take their security from the control
# plane (gRFC A29: TLS to the nodes, certificates from the bootstrap's
# certificate providers); plaintext where it sends none.
SECURE = os.environ.get("XDS_CREDENTIALS") == "1"


def channel_to(target):
    if SECURE:
        fallback = grpc.experimental.insecure_channel_credentials()
        creds = grpc.xds_channel_credentials(fallback)
        return grpc.secure_channel(target, creds)
    return grpc.insecure_channel(target)
CALL_TIMEOUT = 5


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.hosts = {}
        self.errors = []
        self.first = {}

    def ok(self, host):
        with self.lock:
            self.hosts[host] = self.hosts.get(host, 0) + 1
            self.first.setdefault(host, time.time())

    def error(self, e):
        with self.lock:
            self.errors.append(f"{e.code().name}: {e.details()}")

    def take(self):
        with self.lock:
            seen = {"hosts": self.hosts, "errors": self.errors, "first": self.first}
            self.hosts, self.errors, self.first = {}, [], {}
        return seen


def call(stub, pb, tally, metadata=None):
    try:
        reply = stub.Echo(pb.EchoRequest(payload=b"xds"), timeout=CALL_TIMEOUT, metadata=metadata)
        tally.ok(reply.host)
    except grpc.RpcError as e:
        tally.error(e)


def main():
    pb, rpc = stubs(sys.argv[1])
    channel = channel_to(TARGET)
    stub = rpc.EchoStub(channel)
    # Wait for the control plane's answer and a first endpoint: a first
    # call that waits for them (a ring hash channel stays idle until a call
    # picks a node, so the channel's state alone would not do).
    stub.Echo(pb.EchoRequest(payload=b"ready"), timeout=30, wait_for_ready=True)
    print(json.dumps({"ready": True}), flush=True)

    topics = {}
    tally = Tally()
    running = threading.Event()
    loops = []

    def loop():
        while running.is_set():
            call(stub, pb, tally)
            time.sleep(0.002)

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "calls":
            target = stub
            if len(words) > 2:
                if words[2] not in topics:
                    topic = rpc.EchoStub(channel_to(f"xds:///{words[2]}"))
                    topic.Echo(pb.EchoRequest(payload=b"ready"), timeout=30, wait_for_ready=True)
                    topics[words[2]] = topic
                target = topics[words[2]]
            once = Tally()
            for _ in range(int(words[1])):
                call(target, pb, once)
            print(json.dumps(once.take()), flush=True)
        elif words[0] == "keyed":
            header, keys, n = words[1], int(words[2]), int(words[3])
            seen, errors = {}, []
            for k in range(keys):
                once = Tally()
                for _ in range(n):
                    call(stub, pb, once, metadata=((header, f"key-{k}"),))
                seen[f"key-{k}"] = once.hosts
                errors.extend(once.errors)
            print(json.dumps({"keys": seen, "errors": errors}), flush=True)
        elif words[0] == "start":
            tally.take()
            running.set()
            loops = [threading.Thread(target=loop) for _ in range(2)]
            for t in loops:
                t.start()
            print(json.dumps({"started": True}), flush=True)
        elif words[0] == "take":
            print(json.dumps(tally.take()), flush=True)
        elif words[0] == "stop":
            running.clear()
            for t in loops:
                t.join()
            print(json.dumps(tally.take()), flush=True)
        elif words[0] == "other":
            other = channel_to(f"xds:///{words[1]}")
            started = time.monotonic()
            try:
                rpc.EchoStub(other).Echo(
                    pb.EchoRequest(payload=b"xds"), timeout=30, wait_for_ready=False
                )
                code, details = "OK", ""
            except grpc.RpcError as e:
                code, details = e.code().name, e.details()
            seconds = time.monotonic() - started
            other.close()
            print(json.dumps({"code": code, "details": details, "seconds": seconds}), flush=True)
        else:
            sys.exit(f"unknown command {words[0]!r}")
    channel.close()


if __name__ == "__main__":
    main()
