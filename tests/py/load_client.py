"""A steady load of Echo calls from Python grpcio, run until SIGTERM: the
grpcio side of the lifecycle checks (tests/zero_loss.rs,
scripts/bench-lifecycle). grpcio's own channel, no retry policy set (its
transparent retry of calls a server never processed is its default).

Usage: load_client.py PROTO_ROOT TARGET CONCURRENCY

TARGET is HOST:PORT, or `ipv4:A,B` for several addresses, balanced round
robin.

Stubs are generated at start by grpcio-tools from the echo proto: nothing of
svckit runs here. Prints `ready` once a call was answered; at SIGTERM, the
last line `client=grpcio calls=N failed=N codes=CODE:N,...`.
"""

import asyncio
import collections
import signal
import sys

import grpc
from echo_stubs import stubs


async def main(proto_root, target, concurrency):
    pb, rpc = stubs(proto_root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    calls = 0
    codes = collections.Counter()
    ready = asyncio.Event()
    options = []
    if "," in target:
        options.append(
            ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}')
        )
        # The default authority would be the address list, which is no
        # valid :authority.
        options.append(("grpc.default_authority", "localhost"))
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = rpc.EchoStub(channel)
        request = pb.EchoRequest(payload=b"z" * 64)

        async def caller():
            nonlocal calls
            while not stop.is_set():
                calls += 1
                try:
                    await stub.Echo(request, timeout=30)
                    ready.set()
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1
                    print(f"load_client: failed: {e.code().name} {e.details()}",
                          file=sys.stderr, flush=True)

        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await ready.wait()
        print("ready", flush=True)
        await stop.wait()
        await asyncio.gather(*tasks)
    failed = sum(codes.values())
    listed = ",".join(f"{c}:{n}" for c, n in sorted(codes.items()))
    print(f"client=grpcio calls={calls} failed={failed} codes={listed}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
