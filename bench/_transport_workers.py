#!/usr/bin/env python3
"""Worker processes of bench/transport.py: one process per bridge, SDK end or baseline end.

    python bench/_transport_workers.py bridge --config C --socket S --broker-port P
    python bench/_transport_workers.py sdk --config C --sender-id ID --ends N
    python bench/_transport_workers.py tcp-recv | tcp-send --ports P,P,...
    python bench/_transport_workers.py paho-sub --topic T | paho-pub --topics T,T,...

A bridge serves until SIGTERM. Every other worker reads one JSON command a line on
stdin and answers each with one JSON line on stdout (the protocol below); everything
else a library may print goes to stderr, which the orchestrator keeps in a log file.

Commands (`cmd`):
    prepare {size, layout, rep}   sender: build the message; -> {digest, frame_size}
    send {}                       sender: send it; -> {t0, t_taken}
    recv {frame_size}             receiver: wait for the next message; -> {t1, ...}
    verify {}                     receiver: digest what arrived, drop it; -> {digest}
    quit {}                       leave and exit

Times are `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process of the
machine), plus wall-clock UTC where the bridge reports its own time of arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

_OUT: Any = None  # The protocol stream: the real stdout, kept apart from library output.


def _die_with_parent() -> None:
    """SIGKILL this process when the orchestrator dies, however it dies."""
    with_libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with_libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # The parent died before prctl.
        os._exit(1)


def _claim_stdout() -> None:
    global _OUT
    _OUT = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def emit(**fields: Any) -> None:
    _OUT.write(json.dumps(fields) + "\n")
    _OUT.flush()


def commands() -> Iterator[dict[str, Any]]:
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


def serve(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """Answer commands until `quit` or the end of stdin; a failure is answered too."""
    for command in commands():
        name = str(command.get("cmd"))
        if name == "quit":
            emit(ok=True)
            return
        try:
            emit(ok=True, **handlers[name](command))
        except Exception as exc:  # Reported to the orchestrator, which fails loudly.
            emit(ok=False, error=f"{type(exc).__name__}: {exc}")


# --- messages ------------------------------------------------------------------

# A state dict's tensors, as fractions of the message size (like a small CNN's).
_STATE_DICT_SPLIT = (0.50, 0.25, 0.125, 0.0625, 0.0625)


def tensor_sizes(size: int, layout: str) -> list[int]:
    """Element counts of the float32 tensors of a message of `size` bytes."""
    elements = size // 4
    if layout == "tensor":
        return [elements]
    counts = [int(elements * share) for share in _STATE_DICT_SPLIT]
    counts[0] += elements - sum(counts)
    return counts


class Arrays:
    """The float32 arrays of a message, made once per size and marked per repetition."""

    def __init__(self) -> None:
        self._key: tuple[int, str] | None = None
        self.arrays: list[np.ndarray] = []

    def get(self, size: int, layout: str, rep: int) -> list[np.ndarray]:
        if self._key != (size, layout):
            self.arrays = []  # Free the previous size first.
            rng = np.random.default_rng(size)
            self.arrays = [
                rng.standard_normal(n, dtype=np.float32) for n in tensor_sizes(size, layout)
            ]
            self._key = (size, layout)
        for array in self.arrays:
            # Every repetition differs, first and last elements included.
            array[0] = rep
            array[-1] = -rep
        return self.arrays


def digest_arrays(arrays: list[Any]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data.cast("B"))
    return digest.hexdigest()


def as_message(arrays: list[Any]) -> dict[str, Any]:
    if len(arrays) == 1:
        return {"weights": arrays[0], "round": 1}
    return {"weights": {f"layer{i}.weight": a for i, a in enumerate(arrays)}, "round": 1}


def arrays_of(message: Any) -> list[Any]:
    weights = message["weights"]
    if isinstance(weights, dict):
        return [weights[f"layer{i}.weight"] for i in range(len(weights))]
    return [weights]


# --- bridge --------------------------------------------------------------------


class PeakTracer:
    """Keeps the tracemalloc snapshot taken at the peak of traced memory (diagnostics)."""

    def __init__(self, out: Path) -> None:
        import tracemalloc

        self._tm = tracemalloc
        self._out = out
        self._peak = 0
        self._snapshot: Any = None
        self._stop = threading.Event()
        tracemalloc.start(8)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            current = self._tm.get_traced_memory()[0]
            if current > self._peak * 1.02 + (1 << 20):
                self._peak = current
                self._snapshot = self._tm.take_snapshot()

    def write(self) -> None:
        self._stop.set()
        if self._snapshot is None:
            return
        lines = [f"peak traced: {self._peak / 1e6:.1f} MB"]
        for stat in self._snapshot.statistics("traceback")[:12]:
            lines.append(f"{stat.size / 1e6:8.1f} MB in {stat.count} blocks")
            lines.extend(f"    {frame.filename}:{frame.lineno}" for frame in stat.traceback[-4:])
        self._out.write_text("\n".join(lines) + "\n")


def run_bridge(args: argparse.Namespace) -> None:
    from flame.flamelet.dataplane import BrokerSettings, TransferLimits, start_bridge
    from flame.flamelet.dataplane.heap import keep_chunks_on_heap

    config = json.loads(Path(args.config).read_text())
    tracer = PeakTracer(Path(args.trace_memory)) if args.trace_memory else None

    # As start_dataplane does in a flamelet, whose process is the bridge's own.
    keep_chunks_on_heap()

    async def main() -> None:
        # The p2p transport is start_bridge's own, finding its peers through the
        # folder the config names as its `p2p` broker (file:///...).
        plane = await start_bridge(
            config,
            socket_path=Path(args.socket),
            broker=BrokerSettings(port=args.broker_port),
            limits=TransferLimits(),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        emit(ready=True, pid=os.getpid())
        await stop.wait()
        if tracer is not None:
            tracer.write()
        async with asyncio.timeout(10):
            await plane.stop()

    asyncio.run(main())


# --- SDK ends ------------------------------------------------------------------


def run_sdk(args: argparse.Namespace) -> None:
    import torch

    from flame.channel import Timeouts
    from flame.channel_manager import ChannelManager
    from flame.config import Config

    torch.set_num_threads(1)
    config = Config.from_dict(json.loads(Path(args.config).read_text()))
    manager = ChannelManager(config, timeouts=Timeouts(recv=900, send=900, join=60, call=60))
    channel = manager.join(args.channel)
    channel.await_join(timeout=60)
    deadline = time.monotonic() + 60
    while len(channel.all_ends()) < args.ends:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {channel.all_ends()} of {args.ends} ends joined")
        time.sleep(0.05)
    arrays = Arrays()
    state: dict[str, Any] = {}

    def prepare(command: dict[str, Any]) -> dict[str, Any]:
        state.pop("message", None)
        tensors = [
            torch.from_numpy(a)
            for a in arrays.get(command["size"], command["layout"], command["rep"])
        ]
        state["message"] = as_message(tensors)
        state["to"] = command.get("to") or []
        return {"digest": digest_arrays([t.numpy() for t in tensors])}

    def send(command: dict[str, Any]) -> dict[str, Any]:
        message, to = state["message"], state["to"]
        wall, t0 = time.time(), time.monotonic()
        if to:
            for end in to:
                channel.send(end, message)
        else:
            channel.broadcast(message)
        return {"t0": t0, "wall0": wall, "t_taken": time.monotonic()}

    def recv(command: dict[str, Any]) -> dict[str, Any]:
        state.pop("received", None)
        message, arrived = channel.recv(args.sender_id)
        t1 = time.monotonic()
        state["received"] = message
        return {"t1": t1, "bridge_wall": arrived.timestamp(), "wall1": time.time()}

    def verify(command: dict[str, Any]) -> dict[str, Any]:
        message = state.pop("received")
        tensors = arrays_of(message)
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors):
            raise TypeError(f"received {[type(t) for t in tensors]}, not float32 tensors")
        arrays = [t.numpy() for t in tensors]
        if command.get("flip"):  # The self-test: one wrong bit must fail the run.
            arrays[0].view(np.uint8)[len(arrays[0].view(np.uint8)) // 2] ^= 1
        return {"digest": digest_arrays(arrays)}

    emit(ready=True, pid=os.getpid(), ends=sorted(channel.all_ends()))
    try:
        serve({"prepare": prepare, "send": send, "recv": recv, "verify": verify})
    finally:
        manager.cleanup()


# --- baselines: the same frame bytes -------------------------------------------


def encoded_frame(arrays: Arrays, command: dict[str, Any]) -> Any:
    from flame.wire import encode

    return encode(as_message(arrays.get(command["size"], command["layout"], command["rep"])))


def frame_digest(segments: Any) -> str:
    digest = hashlib.sha256()
    for segment in segments:
        digest.update(segment)
    return digest.hexdigest()


def run_tcp_recv(args: argparse.Namespace) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    emit(ready=True, pid=os.getpid(), port=listener.getsockname()[1])
    conn, _ = listener.accept()
    listener.close()
    state: dict[str, Any] = {}

    def recv(command: dict[str, Any]) -> dict[str, Any]:
        state.pop("buffer", None)
        size = command["frame_size"]
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            n = conn.recv_into(view[got:], min(size - got, 4 << 20))
            if n == 0:
                raise ConnectionError(f"the sender closed after {got} of {size} bytes")
            got += n
        t1 = time.monotonic()
        state["buffer"] = buffer
        return {"t1": t1}

    def verify(command: dict[str, Any]) -> dict[str, Any]:
        buffer = state.pop("buffer")
        if command.get("flip"):  # The self-test: one wrong bit must fail the run.
            buffer[len(buffer) // 2] ^= 1
        return {"digest": frame_digest([buffer])}

    serve({"recv": recv, "verify": verify})
    conn.close()


def run_tcp_send(args: argparse.Namespace) -> None:
    conns = [socket.create_connection(("127.0.0.1", int(p))) for p in args.ports.split(",")]
    arrays, state = Arrays(), {}
    emit(ready=True, pid=os.getpid())

    def prepare(command: dict[str, Any]) -> dict[str, Any]:
        state["frame"] = frame = encoded_frame(arrays, command)
        state["to"] = conns[: command.get("receivers") or len(conns)]
        return {"digest": frame_digest(frame.segments()), "frame_size": frame.total_size}

    def send(command: dict[str, Any]) -> dict[str, Any]:
        segments = list(state["frame"].segments())

        def write(conn: socket.socket) -> None:
            for segment in segments:
                conn.sendall(segment)

        t0 = time.monotonic()
        threads = [threading.Thread(target=write, args=(c,)) for c in state["to"]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"t0": t0, "t_taken": time.monotonic()}

    serve({"prepare": prepare, "send": send})
    for conn in conns:
        conn.close()


# paho baseline chunks: the offset, the frame size and the repetition, then the bytes.
_CHUNK_HEADER = struct.Struct(">QQQ")


def _paho_client(client_id: str, port: int) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    # As the bridge does: the publish window, not paho's count, bounds what is in flight.
    client.max_inflight_messages_set(0)

    def no_delay(client: Any, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = no_delay
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(host="127.0.0.1", port=port, keepalive=30, clean_start=True)
    client.loop_start()
    if not connected.wait(15):
        raise TimeoutError("paho did not connect to the broker")
    return client


def run_paho_sub(args: argparse.Namespace) -> None:
    messages: dict[int, dict[str, Any]] = {}
    lock = threading.Condition()
    client = _paho_client(f"bench-sub-{os.getpid()}", args.broker_port)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        view = memoryview(message.payload)
        offset, total, rep = _CHUNK_HEADER.unpack_from(view)
        with lock:
            entry = messages.get(rep)
            if entry is None:
                entry = messages[rep] = {"buffer": bytearray(total), "got": 0}
            data = view[_CHUNK_HEADER.size :]
            entry["buffer"][offset : offset + len(data)] = data
            entry["got"] += len(data)
            if entry["got"] >= total:
                entry["t1"] = time.monotonic()
                lock.notify_all()

    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    client.subscribe(args.topic, qos=1)
    if not subscribed.wait(15):
        raise TimeoutError("the subscription was not acknowledged")
    emit(ready=True, pid=os.getpid())
    state: dict[str, Any] = {}

    def recv(command: dict[str, Any]) -> dict[str, Any]:
        rep = command["rep"]
        with lock:
            if not lock.wait_for(lambda: "t1" in messages.get(rep, {}), timeout=900):
                raise TimeoutError(f"repetition {rep} did not arrive")
            entry = messages.pop(rep)
        if entry["got"] != command["frame_size"]:
            raise ValueError(f"{entry['got']} bytes arrived, {command['frame_size']} were sent")
        state["buffer"] = entry["buffer"]
        return {"t1": entry["t1"]}

    def verify(command: dict[str, Any]) -> dict[str, Any]:
        buffer = state.pop("buffer")
        if command.get("flip"):  # The self-test: one wrong bit must fail the run.
            buffer[len(buffer) // 2] ^= 1
        return {"digest": frame_digest([buffer])}

    serve({"recv": recv, "verify": verify})
    client.disconnect()
    client.loop_stop()


def run_paho_pub(args: argparse.Namespace) -> None:
    from flame.flamelet.dataplane import TransferLimits
    from flame.wire import iter_chunks

    limits = TransferLimits()  # The bridge's chunk size and publish window.
    topics = args.topics.split(",")
    client = _paho_client(f"bench-pub-{os.getpid()}", args.broker_port)
    window = threading.Condition()
    unacked: dict[int, int] = {}
    early: set[int] = set()  # Acknowledged before publish() returned its mid.
    held = [0]

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with window:
            if mid in unacked:
                held[0] -= unacked.pop(mid)
            else:
                early.add(mid)
            window.notify_all()

    client.on_publish = on_publish

    def fits(size: int) -> bool:
        # One chunk always fits, as in the bridge's window.
        return not held[0] or held[0] + size <= limits.publish_window_bytes

    arrays, state = Arrays(), {}
    emit(ready=True, pid=os.getpid())

    def prepare(command: dict[str, Any]) -> dict[str, Any]:
        state["frame"] = frame = encoded_frame(arrays, command)
        state["rep"] = command["rep"]
        state["to"] = topics[: command.get("receivers") or len(topics)]
        return {"digest": frame_digest(frame.segments()), "frame_size": frame.total_size}

    def send(command: dict[str, Any]) -> dict[str, Any]:
        frame, rep, to = state["frame"], state["rep"], state["to"]
        t0 = time.monotonic()
        offset = 0
        # Chunk k goes to every receiver before chunk k+1, as the bridge's concurrent
        # transfers interleave; the same 1 MiB chunks and 24 MiB window as the bridge.
        for chunk in iter_chunks(frame.segments(), limits.chunk_bytes):
            header = _CHUNK_HEADER.pack(offset, frame.total_size, rep)
            payload = header + bytes(chunk)
            size = len(payload)
            for topic in to:
                with window:
                    window.wait_for(functools.partial(fits, size))
                    held[0] += size
                # Never under our lock: paho calls on_publish holding its own.
                info = client.publish(topic, payload, qos=1)
                if info.rc != 0:
                    raise ConnectionError(f"paho could not publish: rc {info.rc}")
                with window:
                    if info.mid in early:
                        early.discard(info.mid)
                        held[0] -= size
                    else:
                        unacked[info.mid] = size
            offset += len(chunk)
        t_taken = time.monotonic()
        with window:
            window.wait_for(lambda: held[0] == 0, timeout=900)
        return {"t0": t0, "t_taken": t_taken}

    serve({"prepare": prepare, "send": send})
    client.disconnect()
    client.loop_stop()


def main() -> None:
    _die_with_parent()
    _claim_stdout()
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "kind", choices=["bridge", "sdk", "tcp-recv", "tcp-send", "paho-sub", "paho-pub"]
    )
    parser.add_argument("--config")
    parser.add_argument("--socket")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--channel", default="param")
    parser.add_argument("--trace-memory", default="")
    parser.add_argument("--sender-id", default="")
    parser.add_argument("--ends", type=int, default=1)
    parser.add_argument("--ports", default="")
    parser.add_argument("--topic", default="")
    parser.add_argument("--topics", default="")
    args = parser.parse_args()
    runners = {
        "bridge": run_bridge,
        "sdk": run_sdk,
        "tcp-recv": run_tcp_recv,
        "tcp-send": run_tcp_send,
        "paho-sub": run_paho_sub,
        "paho-pub": run_paho_pub,
    }
    runners[args.kind](args)


if __name__ == "__main__":
    main()
