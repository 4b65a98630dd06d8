#!/usr/bin/env python3
"""Notifier fan-out benchmark: one event published to N subscribers, each on its own stream.

Starts SecantusDB and the `flame-notifier` binary (with one worker, then with
several: `--workers`), opens N SubscribeEvents streams (one subscriber each) from
subscriber processes, then publishes one event to all N, several rounds, and
measures each subscriber's delivery latency: from the start of PublishEvent to
the stream receiving the event. Receipt times cross process boundaries as
`time.monotonic()`, one system-wide clock on Linux.

Real subscribers (flamelets) are processes of their own, each with its own
connection: the "spread" layout opens the streams from several processes over
several connections each, which the kernel spreads over the notifier's workers;
the "one process" layout opens them all from one process on one connection.
The baseline is the same fan-out, same layout, from a bare NotifyService: the same
gRPC server runtime writing a pre-serialized event to each stream, with neither
database nor hub. It is what grpc.aio alone achieves here, the floor of any Python
notifier. Prints one JSON object per measurement, then a table.

    python bench/notifier_fanout.py            # 1,000 streams, 5 rounds
    python bench/notifier_fanout.py --quick    # 200 streams, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the repository root holds `tests.support`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from flame.notifier.app import open_database
from flame.notifier.store import EventDraft, EventStore
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.server import ServerOptions, bind_serialized, start_server
from tests.support.mongo import secantus_server
from tests.support.processes import start_server_process

ROUND_TIMEOUT = 60.0
TARGET_P99_MS = 100.0
# Compared with one worker: one per core, up to 4.
DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)


@dataclass(frozen=True)
class Layout:
    """How the subscribers connect: `processes` processes, `channels` connections each."""

    name: str
    processes: int
    channels: int


SPREAD = Layout("spread", processes=4, channels=4)
ONE_PROCESS = Layout("one process", processes=1, channels=1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class BareNotifier(notify_service_pb2_grpc.NotifyServiceServicer):
    """NotifyService with neither database nor hub: a publish replaces the one event it
    holds, pre-serialized, and wakes every stream, which writes it."""

    def __init__(self) -> None:
        self._cursor = 0
        self._encoded = b""
        self._published = asyncio.Event()

    async def PublishEvent(self, request: Any, context: Any) -> bytes:  # type: ignore[override]
        self._cursor += 1
        event = event_pb2.Event(cursor=self._cursor, type=request.event.type)
        self._encoded = notify_service_pb2.SubscribeEventsResponse(event=event).SerializeToString()
        self._published.set()
        self._published = asyncio.Event()
        return notify_service_pb2.PublishEventResponse(events=[event]).SerializeToString()

    async def SubscribeEvents(self, request: Any, context: Any) -> None:  # type: ignore[override]
        delivered = 0  # a stream opened late gets the last event at once
        while True:
            if delivered == self._cursor:
                await self._published.wait()
            delivered = self._cursor
            await context.write(self._encoded)


async def serve_bare_notifier() -> None:
    service = notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"]
    serialized = {"PublishEvent", "SubscribeEvents"}
    running = await start_server(
        [bind_serialized(service, BareNotifier(), responses=serialized)], ServerOptions()
    )
    print(f"bare notifier serving on {running.address}", flush=True)
    await asyncio.Event().wait()


def subscriber_names(streams: int) -> list[str]:
    return [f"task/bench{index}" for index in range(streams)]


def shares(total: int, parts: int) -> Iterator[range]:
    """`range(total)` cut into `parts` consecutive ranges of (nearly) equal length."""
    for part in range(parts):
        yield range(total * part // parts, total * (part + 1) // parts)


async def follow(address: str, first: int, count: int, channels: int) -> None:
    """A subscriber process: follow subscribers `first`..`first + count - 1` over
    `channels` connections and, once all have received an event, print its cursor
    and their receipt times as one JSON line."""
    received: dict[int, list[float]] = {}

    async def follow_one(stub: Any, subscriber: str) -> None:
        request = notify_service_pb2.SubscribeEventsRequest(
            subscriber=subscriber, heartbeat_seconds=60
        )
        async for response in stub.SubscribeEvents(request):
            if response.HasField("event"):
                times = received.setdefault(response.event.cursor, [])
                times.append(time.monotonic())
                if len(times) == count:
                    print(json.dumps({"cursor": response.event.cursor, "times": times}), flush=True)
                    if len(received) == 1:
                        # Every stream is open: this process stands for `count` small
                        # subscriber processes, whose collectors have next to nothing
                        # to walk, so its streams' objects are kept out of collections.
                        gc.freeze()

    async with AsyncExitStack() as stack:
        # A channel of its own is a connection of its own, which SO_REUSEPORT may
        # hand to another worker.
        own = [("grpc.use_local_subchannel_pool", 1)]
        stubs = [
            notify_service_pb2_grpc.NotifyServiceStub(
                await stack.enter_async_context(grpc.aio.insecure_channel(address, options=own))
            )
            for _ in range(channels)
        ]
        names = subscriber_names(first + count)[first:]
        await asyncio.gather(
            *(follow_one(stubs[index % channels], name) for index, name in enumerate(names))
        )


async def start_subscribers(
    stack: AsyncExitStack, address: str, streams: int, layout: Layout
) -> list[asyncio.StreamReader]:
    """Start the layout's subscriber processes; their output, one line per event."""
    outputs = []
    for share in shares(streams, layout.processes):
        command = [sys.executable, __file__, "--follow", address]
        command += ["--first", str(share.start), "--streams", str(len(share))]
        command += ["--channels", str(layout.channels)]
        child = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
        stack.push_async_callback(_stop, child)
        assert child.stdout is not None
        outputs.append(child.stdout)
    return outputs


async def _stop(child: asyncio.subprocess.Process) -> None:
    child.kill()
    await child.wait()


async def fanout(address: str, streams: int, rounds: int, layout: Layout) -> dict[str, Any]:
    """Publish `rounds` events to `streams` subscribers; latencies and publish call times."""
    subscribers = subscriber_names(streams)
    latencies: list[float] = []
    calls: list[float] = []
    async with AsyncExitStack() as stack:
        outputs = await start_subscribers(stack, address, streams, layout)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        # Round 0 warms up: it proves every stream open and is not counted.
        for number in range(rounds + 1):
            started = time.monotonic()
            response = await stub.PublishEvent(
                publish_request(subscribers, number), timeout=ROUND_TIMEOUT
            )
            call_ms = (time.monotonic() - started) * 1000
            receipts = [await read_receipt(output) for output in outputs]
            assert {r["cursor"] for r in receipts} == {response.events[0].cursor}, "one at a time"
            if number:
                latencies += [(at - started) * 1000 for r in receipts for at in r["times"]]
                calls.append(call_ms)
            await asyncio.sleep(0.5)  # let the pollers and the streams settle between rounds
    return {"latencies": latencies, "calls": calls}


async def read_receipt(output: asyncio.StreamReader) -> Any:
    line = await asyncio.wait_for(output.readline(), ROUND_TIMEOUT)
    assert line, "a subscriber process ended"
    return json.loads(line)


def publish_request(subscribers: list[str], number: int) -> notify_service_pb2.PublishEventRequest:
    return notify_service_pb2.PublishEventRequest(
        subscribers=subscribers,
        event=event_pb2.Event(type=event_pb2.Event.TYPE_START_JOB, job_id=f"job{number}"),
    )


async def store_publish_ms(uri: str, streams: int, rounds: int) -> float:
    """Median time of the publish transaction alone, for the same fan-out."""
    client, db = await open_database(uri, "bench_store")
    try:
        store = EventStore(db)
        await store.prepare()
        subscribers = [f"task/store{index}" for index in range(streams)]
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            await store.publish(subscribers, EventDraft("TYPE_START_JOB", "job"))
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await client.close()
    return statistics.median(times)


def measure(uri: str, streams: int, rounds: int, workers: int, layout: Layout) -> dict[str, Any]:
    """One measurement: a fresh notifier with `workers` on a fresh database."""
    database = f"bench_{workers}_{layout.processes}x{layout.channels}"
    command = ["flame-notifier", "--plaintext", "--mongo-uri", uri, "--database", database]
    with start_server_process([*command, "--workers", str(workers)]) as notifier:
        measured = asyncio.run(fanout(notifier.address, streams, rounds, layout))
    latencies = measured["latencies"]
    return {
        # Distinct per configuration, for tables that show names only (bench/job_start.py).
        "name": f"notifier_fanout_p99_workers{workers}_{layout.processes}x{layout.channels}",
        "params": {
            "streams": streams,
            "rounds": rounds,
            "database": "secantusdb",
            "workers": workers,
            "subscriber_processes": layout.processes,
            "channels_per_process": layout.channels,
        },
        "value": round(percentile(latencies, 0.99), 2),
        "unit": "ms",
        "target": TARGET_P99_MS,
        "p50": round(statistics.median(latencies), 2),
        "max": round(max(latencies), 2),
        "publish_call_ms": round(statistics.median(measured["calls"]), 2),
    }


def measure_bare(streams: int, rounds: int, layout: Layout) -> float:
    """p99 of the same fan-out from `BareNotifier`, in ms."""
    with start_server_process([sys.executable, __file__, "--bare-notifier"]) as bare:
        measured = asyncio.run(fanout(bare.address, streams, rounds, layout))
    return percentile(measured["latencies"], 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 streams, 3 rounds")
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="notifier workers to compare with one (default: one per core, up to 4)",
    )
    parser.add_argument("--follow", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--bare-notifier", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        asyncio.run(follow(args.follow, args.first, args.streams, args.channels))
        return
    if args.bare_notifier:
        asyncio.run(serve_bare_notifier())
        return
    streams, rounds = (200, 3) if args.quick else (args.streams, args.rounds)
    configurations = [(w, layout) for layout in (SPREAD, ONE_PROCESS) for w in (1, args.workers)]
    with tempfile.TemporaryDirectory() as tmp, secantus_server(Path(tmp) / "db") as uri:
        results = [measure(uri, streams, rounds, w, layout) for w, layout in configurations]
        store_ms = asyncio.run(store_publish_ms(uri, streams, rounds))
    bare = {layout.name: measure_bare(streams, rounds, layout) for layout in (SPREAD, ONE_PROCESS)}
    for result, (_, layout) in zip(results, configurations, strict=True):
        result.update(
            store_publish_ms=round(store_ms, 2),
            baseline=round(bare[layout.name], 2),
            baseline_name="p99 of the same fan-out from a bare NotifyService (no database, no hub)",
            ratio=round(result["value"] / bare[layout.name], 2),
        )
        print(json.dumps(result))
    print_table(results)


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'streams':>8} {'workers':>8} {'subscribers':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'publish ms':>11} {'txn ms':>7} {'bare p99':>9} {'p99<100':>8}"
    )
    for result in results:
        params = result["params"]
        layout = f"{params['subscriber_processes']}x{params['channels_per_process']}"
        print(
            f"{params['streams']:>8} {params['workers']:>8} {layout:>12} {result['p50']:>8} "
            f"{result['value']:>8} {result['max']:>8} {result['publish_call_ms']:>11} "
            f"{result['store_publish_ms']:>7} {result['baseline']:>9} "
            f"{'yes' if result['value'] < result['target'] else 'no':>8}"
        )
    print("subscribers: processes x connections per process; bare: no database, no hub")


if __name__ == "__main__":
    main()
