#!/usr/bin/env python3
"""Notifier fan-out benchmark: one event published to N subscribers, each on its own stream.

Starts SecantusDB and a notifier in this process, opens N SubscribeEvents streams
(one subscriber each), then publishes one event to all N, several rounds, and
measures each subscriber's delivery latency: from the start of PublishEvent to
the stream receiving the event. The baseline is the same fan-out on in-process
asyncio queues, with neither gRPC nor a database. Prints one JSON object per
measurement, then a table.

With `--remote` a child process opens the streams, as subscribers on other hosts
would: the notifier then has this process's core to itself rather than sharing
it with a thousand stream readers. Receipt times cross the process boundary as
`time.monotonic()`, one system-wide clock on Linux.

    python bench/notifier_fanout.py            # 1,000 streams, 5 rounds
    python bench/notifier_fanout.py --quick    # 200 streams, 3 rounds
    python bench/notifier_fanout.py --remote   # streams opened by a child process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the repository root holds `tests.support`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flame.notifier.app import Notifier, open_database, start_notifier
from flame.notifier.store import EventDraft, EventStore
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.server import ServerOptions
from tests.support.mongo import secantus_server

ROUND_TIMEOUT = 60.0


@dataclass
class Round:
    """Receipt times of one published event, one slot per subscriber."""

    started: float
    received: list[float]
    count: int = 0
    done: asyncio.Event | None = None

    def receive(self, index: int, now: float) -> None:
        self.received[index] = now
        self.count += 1
        if self.count == len(self.received) and self.done is not None:
            self.done.set()

    def latencies_ms(self) -> list[float]:
        return [(at - self.started) * 1000 for at in self.received]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def queue_baseline(streams: int, rounds: int) -> list[float]:
    """The same fan-out on asyncio queues: what the event loop alone costs."""
    queues: list[asyncio.Queue[Round]] = [asyncio.Queue() for _ in range(streams)]

    async def consume(index: int) -> None:
        while True:
            measured = await queues[index].get()
            measured.receive(index, time.perf_counter())

    consumers = [asyncio.create_task(consume(i)) for i in range(streams)]
    latencies: list[float] = []
    for _ in range(rounds):
        measured = Round(time.perf_counter(), [0.0] * streams, done=asyncio.Event())
        for queue in queues:
            queue.put_nowait(measured)
        await asyncio.wait_for(measured.done.wait(), ROUND_TIMEOUT)  # type: ignore[union-attr]
        latencies += measured.latencies_ms()
    for consumer in consumers:
        consumer.cancel()
    return latencies


async def follow(
    stub: Any, subscriber: str, index: int, current: Callable[[], Round | None]
) -> None:
    request = notify_service_pb2.SubscribeEventsRequest(subscriber=subscriber, heartbeat_seconds=60)
    async for response in stub.SubscribeEvents(request):
        measured = current()
        if response.HasField("event") and measured is not None:
            measured.receive(index, time.perf_counter())


def subscriber_names(streams: int) -> list[str]:
    return [f"task/bench{index}" for index in range(streams)]


def publish_request(subscribers: list[str], number: int) -> notify_service_pb2.PublishEventRequest:
    return notify_service_pb2.PublishEventRequest(
        subscribers=subscribers,
        event=event_pb2.Event(type=event_pb2.Event.TYPE_START_JOB, job_id=f"job{number}"),
    )


async def notifier_fanout(notifier: Notifier, streams: int, rounds: int) -> dict[str, Any]:
    """Publish `rounds` events to `streams` subscribers; latencies and publish call times."""
    subscribers = subscriber_names(streams)
    current: Round | None = None
    async with open_channel(notifier.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        readers = [
            asyncio.create_task(follow(stub, s, i, lambda: current))
            for i, s in enumerate(subscribers)
        ]
        latencies: list[float] = []
        calls: list[float] = []
        # Round 0 warms up: it proves every stream open and is not counted.
        for number in range(rounds + 1):
            current = Round(time.perf_counter(), [0.0] * streams, done=asyncio.Event())
            request = publish_request(subscribers, number)
            await stub.PublishEvent(request, timeout=ROUND_TIMEOUT)
            call_ms = (time.perf_counter() - current.started) * 1000
            await asyncio.wait_for(current.done.wait(), ROUND_TIMEOUT)  # type: ignore[union-attr]
            if number:
                latencies += current.latencies_ms()
                calls.append(call_ms)
            await asyncio.sleep(0.5)  # let the poller and the streams settle between rounds
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return {"latencies": latencies, "calls": calls}


async def follow_remotely(address: str, streams: int) -> None:
    """The child of `--remote`: follow the streams and, once all have received an
    event, print its cursor and receipt times as one JSON line."""
    received: dict[int, list[float]] = {}

    async def follow_one(stub: Any, subscriber: str) -> None:
        request = notify_service_pb2.SubscribeEventsRequest(
            subscriber=subscriber, heartbeat_seconds=60
        )
        async for response in stub.SubscribeEvents(request):
            if response.HasField("event"):
                times = received.setdefault(response.event.cursor, [])
                times.append(time.monotonic())
                if len(times) == streams:
                    print(json.dumps({"cursor": response.event.cursor, "times": times}), flush=True)

    async with open_channel(address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        await asyncio.gather(*(follow_one(stub, s) for s in subscriber_names(streams)))


async def remote_fanout(notifier: Notifier, streams: int, rounds: int) -> dict[str, Any]:
    """`notifier_fanout` with the streams in a child process (`follow_remotely`)."""
    subscribers = subscriber_names(streams)
    command = [sys.executable, __file__, "--follow", notifier.address, "--streams", str(streams)]
    child = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    assert child.stdout is not None
    latencies: list[float] = []
    calls: list[float] = []
    try:
        async with open_channel(notifier.address, tls=None) as channel:
            stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
            # Round 0 warms up: it proves every stream open and is not counted.
            for number in range(rounds + 1):
                started = time.monotonic()
                response = await stub.PublishEvent(
                    publish_request(subscribers, number), timeout=ROUND_TIMEOUT
                )
                call_ms = (time.monotonic() - started) * 1000
                line = await asyncio.wait_for(child.stdout.readline(), ROUND_TIMEOUT)
                receipt = json.loads(line)
                assert receipt["cursor"] == response.events[0].cursor, "one round at a time"
                if number:
                    latencies += [(at - started) * 1000 for at in receipt["times"]]
                    calls.append(call_ms)
                await asyncio.sleep(0.5)
    finally:
        child.kill()
        await child.wait()
    return {"latencies": latencies, "calls": calls}


async def store_publish_ms(store: EventStore, streams: int, rounds: int) -> float:
    """Median time of the publish transaction alone, for the same fan-out."""
    subscribers = [f"task/store{index}" for index in range(streams)]
    draft = EventDraft("TYPE_START_JOB", "job")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await store.publish(subscribers, draft)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(uri: str, streams: int, rounds: int, remote: bool) -> dict[str, Any]:
    client, db = await open_database(uri, "bench")
    notifier = await start_notifier(db, ServerOptions())
    fanout = remote_fanout if remote else notifier_fanout
    try:
        measured = await fanout(notifier, streams, rounds)
        store_ms = await store_publish_ms(EventStore(db), streams, rounds)
    finally:
        await notifier.stop()
        await client.close()
    baseline = await queue_baseline(streams, rounds)
    latencies = measured["latencies"]
    value, base = statistics.median(latencies), statistics.median(baseline)
    return {
        "name": "notifier_fanout_latency",
        "params": {
            "streams": streams,
            "rounds": rounds,
            "database": "secantusdb",
            "subscribers": "child process" if remote else "this process",
        },
        "value": round(value, 2),
        "unit": "ms",
        "p99": round(percentile(latencies, 0.99), 2),
        "max": round(max(latencies), 2),
        "publish_call_ms": round(statistics.median(measured["calls"]), 2),
        "store_publish_ms": round(store_ms, 2),
        "baseline": round(base, 3),
        "baseline_p99": round(percentile(baseline, 0.99), 3),
        "ratio": round(value / base, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 streams, 3 rounds")
    parser.add_argument("--remote", action="store_true", help="streams in a child process")
    parser.add_argument("--follow", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    streams, rounds = (200, 3) if args.quick else (args.streams, args.rounds)
    if args.follow:
        asyncio.run(follow_remotely(args.follow, streams))
        return
    with tempfile.TemporaryDirectory() as tmp, secantus_server(Path(tmp) / "db") as uri:
        result = asyncio.run(measure(uri, streams, rounds, args.remote))
    print(json.dumps(result))
    print()
    print(
        f"{'streams':>8} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'publish ms':>11} "
        f"{'txn ms':>9} {'queue p50':>10} {'queue p99':>10}"
    )
    print(
        f"{streams:>8} {result['value']:>9} {result['p99']:>9} {result['max']:>9} "
        f"{result['publish_call_ms']:>11} {result['store_publish_ms']:>9} "
        f"{result['baseline']:>10} {result['baseline_p99']:>10}"
    )


if __name__ == "__main__":
    main()
