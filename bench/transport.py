#!/usr/bin/env python3
"""Data-plane transport benchmark: weight messages through the flamelet bridges.

Measures one-to-one and one-to-eight transfers of float32 torch weight messages
(1 MB, 100 MB, 400 MB; 1 MB = 10^6 bytes) from role code to role code, every SDK end
and every bridge in its own process as in production:

    mqtt_bridge   SDK -> bridge -> mosquitto -> bridge -> SDK   (backend "mqtt")
    p2p_bridge    SDK -> bridge -> bridge -> SDK                 (backend "p2p")

and, in the same run, the baselines:

    raw_tcp       the encoded frame's bytes written to loopback TCP sockets by one
                  process and read by another: the physical limit
    plain_paho    paho-mqtt publisher -> mosquitto -> subscriber, in the bridge's own
                  1 MiB chunks at QoS 1 within its 24 MiB publish window, one topic
                  per receiver as the bridge does: the broker's own limit

Throughput is delivered bytes (message size x receivers) over the wall time from the
sender's call until the last receiver holds the decoded message. Every received
message is checked against the sender's SHA-256; a wrong byte stops the run with an
error. Peak RSS is each process's VmHWM, reset before each transfer.

    python bench/transport.py            # 1, 100, 400 MB; 1:1 and 1:8 (a few minutes)
    python bench/transport.py --quick    # 1, 100 MB 1:1 and 1 MB 1:8 (under a minute)

Also: `--paths` (a subset), `--plan RECEIVERS:MB:REPS,...`, `--layout state_dict`,
`--profile DIR` (py-spy, `pip install py-spy`, on the four processes of the largest
1:1 bridged transfer), `--self-test-corruption` (flips one received bit: must fail).
The figures need a quiet machine: the run reports the CPU share other processes took.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "_transport_workers.py"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MB = 1_000_000
MIB = 1 << 20
FANOUT = 8
CHANNEL = "param"
TRANSFER_TIMEOUT = 600.0
START_TIMEOUT = 90.0

# Issue targets.
P2P_VS_RAW = 0.50  # p2p >= 50% of raw loopback TCP at 100 MB, one to one
MQTT_VS_PAHO = 0.60  # MQTT path >= 60% of plain paho through the same broker
RSS_SLOPE, RSS_BASE_MB = 1.5, 100.0  # bridge peak RSS <= 1.5 x message + 100 MB

PATHS = {
    "raw_tcp": "raw loopback TCP, process to process",
    "plain_paho": "plain paho-mqtt pub -> mosquitto -> sub (1 MiB chunks, QoS 1)",
    "mqtt_bridge": "SDK -> bridge -> mosquitto -> bridge -> SDK",
    "p2p_bridge": "SDK -> bridge -> bridge -> SDK (p2p)",
}


class BenchError(RuntimeError):
    """The benchmark cannot go on: a wrong byte, a dead worker, a timeout."""


# --- processes -----------------------------------------------------------------


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Processes:
    """Every child of the run, stopped for sure at the end (or if this process dies:
    each child gets SIGKILL when its parent goes, by PR_SET_PDEATHSIG)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.folder / f"{name}.log"
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,
            text=True,
        )
        proc = Proc(name, process, log)
        self.children.append(proc)
        return proc

    def stop(self, procs: list[Proc] | None = None) -> None:
        """SIGTERM, then SIGKILL after 10 s; role code first, then bridges, broker last."""
        targets = [p for p in (self.children if procs is None else procs) if p.alive()]
        for proc in targets:
            with contextlib.suppress(ProcessLookupError):
                proc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in targets:
            try:
                proc.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait(5)
        for proc in targets:
            proc.close()
        self.children = [p for p in self.children if p.alive()]

    def stop_all(self) -> None:
        order = ("sdk", "tcp", "paho", "bridge", "mosquitto")
        for prefix in order:
            self.stop([p for p in self.children if p.name.startswith(prefix)])
        self.stop()


class Proc:
    """A child process; workers answer JSON lines on stdout, read by a thread."""

    def __init__(self, name: str, process: subprocess.Popen[str], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.pid = process.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def post(self, **command: Any) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name} is gone ({exc}){self.tail()}") from None

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(
                f"{self.name} did not answer within {timeout:g} s{self.tail()}"
            ) from None
        if line is None:
            self.process.wait(5)
            raise BenchError(f"{self.name} exited with {self.process.returncode}{self.tail()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok", True):
            raise BenchError(f"{self.name} failed: {reply.get('error')}{self.tail()}")
        return reply

    def request(self, timeout: float = TRANSFER_TIMEOUT, **command: Any) -> dict[str, Any]:
        self.post(**command)
        return self.answer(timeout)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return ("\n  --- " + self.name + " log ---\n  " + "\n  ".join(text)) if text else ""

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()


def worker(procs: Processes, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    return procs.spawn(name, [sys.executable, str(WORKERS), *args], env)


def wait_ready(workers: list[Proc]) -> list[dict[str, Any]]:
    return [w.answer(START_TIMEOUT) for w in workers]


# --- memory --------------------------------------------------------------------


def reset_peak(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / MB
    raise BenchError(f"no {key} for process {pid}")


def rss_now_mb(pid: int) -> float:
    return peak_rss_mb(pid, "VmRSS")


# --- other load on the machine ---------------------------------------------------


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and its reaped children (every worker, the broker)."""
    import resource

    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the broker ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(procs: Processes) -> tuple[Proc, int]:
    port = free_port()
    conf = procs.folder / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    broker = procs.spawn("mosquitto", [MOSQUITTO, "-c", str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not broker.alive():
            raise BenchError(f"mosquitto exited{broker.tail()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        time.sleep(0.05)
    raise BenchError(f"mosquitto does not listen on {port}{broker.tail()}")


# --- topologies ------------------------------------------------------------------


@dataclass
class Topology:
    """One sender and FANOUT receivers of one path, and the processes to watch."""

    path: str
    sender: Proc
    receivers: list[Proc]
    receiver_ids: list[str] = field(default_factory=list)
    sender_bridge: Proc | None = None
    receiver_bridges: list[Proc] = field(default_factory=list)
    broker: Proc | None = None
    procs: list[Proc] = field(default_factory=list)
    idle_rss: dict[str, float] = field(default_factory=dict)  # bridges joined, no traffic yet


def task_config(
    task_id: str, role: str, job_id: str, backend: str, broker: str, peers: Path
) -> dict[str, Any]:
    """A task configuration in the shape the control plane writes; p2p ends find each
    other through the folder `peers` (standalone discovery)."""
    return {
        "taskid": task_id,
        "role": role,
        "realm": "default/us",
        "job": {"id": job_id, "name": "transport-bench"},
        "backend": backend,
        "brokers": [{"sort": "mqtt", "host": broker}, {"sort": "p2p", "host": peers.as_uri()}],
        "groupAssociation": {CHANNEL: "default"},
        "channels": [
            {
                "name": CHANNEL,
                "pair": ["trainer", "aggregator"],
                "groupBy": {"type": "tag", "value": ["default"]},
                "funcTags": {
                    "trainer": ["fetch", "upload"],
                    "aggregator": ["distribute", "aggregate"],
                },
                "backend": backend,
            }
        ],
    }


TRACE_MEMORY: Path | None = None  # --trace-memory


def start_bridged(procs: Processes, backend: str, broker: Proc, port: int) -> Topology:
    """FANOUT+1 bridges and as many SDK ends, each in its own process."""
    job_id = uuid.uuid4().hex[:24]
    ids = [uuid.uuid4().hex + uuid.uuid4().hex[:8] for _ in range(FANOUT + 1)]
    roles = ["aggregator"] + ["trainer"] * FANOUT
    folder = procs.folder / backend
    folder.mkdir()
    p2p_dir = folder / "peers"
    p2p_dir.mkdir()
    bridges, sockets = [], []
    for index, (task_id, role) in enumerate(zip(ids, roles, strict=True)):
        config = task_config(task_id, role, job_id, backend, f"127.0.0.1:{port}", p2p_dir)
        config_path = folder / f"task{index}.json"
        config_path.write_text(json.dumps(config))
        sock = folder / f"t{index}.sock"
        sockets.append((config_path, sock))
        trace = (
            ["--trace-memory", str(TRACE_MEMORY / f"{backend}-bridge{index}.txt")]
            if TRACE_MEMORY
            else []
        )
        bridges.append(
            worker(
                procs,
                f"bridge-{backend}-{index}",
                "bridge",
                "--config",
                str(config_path),
                "--socket",
                str(sock),
                "--broker-port",
                str(port),
                *trace,
            )
        )
    wait_ready(bridges)
    sdks = []
    for index, (config_path, sock) in enumerate(sockets):
        sdks.append(
            worker(
                procs,
                f"sdk-{backend}-{index}",
                "sdk",
                "--config",
                str(config_path),
                "--sender-id",
                ids[0],
                "--ends",
                str(FANOUT if index == 0 else 1),
                env={"FLAME_DATAPLANE_SOCKET": str(sock)},
            )
        )
    ready = wait_ready(sdks)
    if sorted(ready[0]["ends"]) != sorted(ids[1:]):
        raise BenchError(f"the sender sees ends {ready[0]['ends']}, expected {ids[1:]}")
    time.sleep(0.5)
    idle = {
        "sender_bridge": rss_now_mb(bridges[0].pid),
        "receiver_bridge": rss_now_mb(bridges[1].pid),
    }
    return Topology(
        path=f"{backend}_bridge",
        sender=sdks[0],
        receivers=sdks[1:],
        receiver_ids=ids[1:],
        sender_bridge=bridges[0],
        receiver_bridges=bridges[1:],
        broker=broker if backend == "mqtt" else None,
        procs=[*sdks, *bridges],
        idle_rss=idle,
    )


def start_tcp(procs: Processes) -> Topology:
    receivers = [worker(procs, f"tcp-recv-{i}", "tcp-recv") for i in range(FANOUT)]
    ports = [str(r["port"]) for r in wait_ready(receivers)]
    sender = worker(procs, "tcp-send", "tcp-send", "--ports", ",".join(ports))
    wait_ready([sender])
    return Topology("raw_tcp", sender, receivers, procs=[sender, *receivers])


def start_paho(procs: Processes, broker: Proc, port: int) -> Topology:
    base = f"bench/{secrets.token_hex(6)}/data"
    topics = [f"{base}/{i}" for i in range(FANOUT)]
    receivers = [
        worker(procs, f"paho-sub-{i}", "paho-sub", "--topic", t, "--broker-port", str(port))
        for i, t in enumerate(topics)
    ]
    wait_ready(receivers)
    sender = worker(
        procs, "paho-pub", "paho-pub", "--topics", ",".join(topics), "--broker-port", str(port)
    )
    wait_ready([sender])
    return Topology("plain_paho", sender, receivers, broker=broker, procs=[sender, *receivers])


# --- measuring -------------------------------------------------------------------


@dataclass
class Measurement:
    path: str
    fanout: int
    size_mb: int
    layout: str
    runs: list[float]  # MB/s per repetition
    rss: dict[str, float]  # role -> peak RSS, MB (max over repetitions and processes)
    breakdown: dict[str, float]  # seconds, medians over repetitions
    idle_rss: dict[str, float] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.runs)


FLIP_ONE_BIT = False  # --self-test-corruption


def transfer_once(
    top: Topology, size_mb: int, fanout: int, layout: str, rep: int
) -> tuple[float, dict[str, float], dict[str, float]]:
    """One transfer; its throughput (MB/s), peak RSS per role, and timing breakdown."""
    receivers = top.receivers[:fanout]
    bridged = top.sender_bridge is not None
    to = top.receiver_ids[:1] if bridged and fanout == 1 else []
    prepared = top.sender.request(
        cmd="prepare", size=size_mb * MB, layout=layout, rep=rep, to=to, receivers=fanout
    )
    roles: dict[str, list[Proc]] = {"sender": [top.sender], "receiver": receivers}
    if bridged:
        roles["sender_bridge"] = [top.sender_bridge]  # type: ignore[list-item]
        roles["receiver_bridge"] = top.receiver_bridges[:fanout]
    if top.broker is not None:
        roles["broker"] = [top.broker]
    watched = [p for procs in roles.values() for p in procs]
    reset_peak([p.pid for p in watched])
    cpu0 = {p.pid: cpu_seconds(p.pid) for p in watched}
    for receiver in receivers:
        receiver.post(cmd="recv", frame_size=prepared.get("frame_size", 0), rep=rep)
    sent = top.sender.request(cmd="send")
    arrived = [r.answer(TRANSFER_TIMEOUT) for r in receivers]
    rss = {role: max(peak_rss_mb(p.pid) for p in procs) for role, procs in roles.items()}
    cpu = {
        role: sum(cpu_seconds(p.pid) - cpu0[p.pid] for p in procs) for role, procs in roles.items()
    }
    flips = [FLIP_ONE_BIT and i == len(receivers) - 1 for i in range(len(receivers))]
    replies = [r.request(cmd="verify", flip=flip) for r, flip in zip(receivers, flips, strict=True)]
    for receiver, reply in zip(receivers, replies, strict=True):
        if reply["digest"] != prepared["digest"]:
            raise BenchError(
                f"{top.path}: {receiver.name} received a message whose SHA-256 is "
                f"{reply['digest']}, the sender's is {prepared['digest']} "
                f"({size_mb} MB, 1:{fanout}, repetition {rep})"
            )
    last = max(a["t1"] for a in arrived)
    elapsed = last - sent["t0"]
    breakdown = {"total_s": elapsed, "sender_call_s": sent["t_taken"] - sent["t0"]}
    # CPU seconds per role (the sender's includes building nothing: the message is ready).
    breakdown.update({f"cpu_{role}_s": seconds for role, seconds in cpu.items()})
    if bridged:
        # Wall clocks: when the sender called, when the receiving bridge had it whole.
        at_bridge = max(a["bridge_wall"] for a in arrived)
        breakdown["to_receiving_bridge_s"] = at_bridge - sent["wall0"]
        breakdown["bridge_to_receiver_sdk_s"] = max(a["wall1"] - a["bridge_wall"] for a in arrived)
    return fanout * size_mb * MB / elapsed / MB, rss, breakdown


def measure(top: Topology, size_mb: int, fanout: int, layout: str, reps: int) -> Measurement:
    runs: list[float] = []
    rss: dict[str, float] = {}
    breakdowns: list[dict[str, float]] = []
    for rep in range(reps):
        throughput, peak, breakdown = transfer_once(top, size_mb, fanout, layout, rep + 1)
        runs.append(throughput)
        breakdowns.append(breakdown)
        for role, value in peak.items():
            rss[role] = max(rss.get(role, 0.0), value)
    median = {k: statistics.median(b[k] for b in breakdowns) for k in breakdowns[0]}
    cpu = {
        k.removeprefix("cpu_").removesuffix("_s"): round(v, 2)
        for k, v in median.items()
        if k.startswith("cpu_")
    }
    print(
        f"  {top.path:<12} 1:{fanout} {size_mb:>4} MB  {statistics.median(runs):8.1f} MB/s"
        f"  runs {[round(r, 1) for r in runs]}  cpu s {cpu}",
        file=sys.stderr,
        flush=True,
    )
    return Measurement(top.path, fanout, size_mb, layout, runs, rss, median, top.idle_rss)


def warm_up(top: Topology, fanout: int, layout: str) -> None:
    """A 1 MB transfer, not counted: first calls set up streams, connections, caches."""
    transfer_once(top, 1, fanout, layout, 0)


def run_path(
    top: Topology, plan: list[tuple[int, int, int]], layout: str, profile: Path | None = None
) -> list[Measurement]:
    results = []
    largest = max(size for f, size, _ in plan if f == 1) if any(f == 1 for f, _, _ in plan) else 0
    for fanout in sorted({f for f, _, _ in plan}):
        warm_up(top, fanout, layout)
        for f, size_mb, reps in plan:
            if f != fanout:
                continue
            bridged = top.sender_bridge is not None
            if profile is not None and bridged and (fanout, size_mb) == (1, largest):
                with py_spy(top, profile):
                    results.append(measure(top, size_mb, fanout, layout, reps))
            else:
                results.append(measure(top, size_mb, fanout, layout, reps))
    return results


@contextlib.contextmanager
def py_spy(top: Topology, folder: Path) -> Any:
    """Sample the sender, both bridges and the receiver of a 1:1 transfer with py-spy
    (`pip install py-spy`); collapsed stacks, one file per process, in `folder`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    folder.mkdir(parents=True, exist_ok=True)
    assert top.sender_bridge is not None
    targets = {
        "sender_sdk": top.sender,
        "sender_bridge": top.sender_bridge,
        "receiver_bridge": top.receiver_bridges[0],
        "receiver_sdk": top.receivers[0],
    }
    spies = []
    for role, proc in targets.items():
        out = folder / f"{top.path}-{role}.txt"
        spies.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--rate",
                    "200",
                    "--threads",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)
        for process in spies:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"  py-spy profiles: {folder}/{top.path}-*.txt", file=sys.stderr)


# --- reporting -------------------------------------------------------------------


def r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def rows(
    results: dict[str, list[Measurement]],
    skipped: dict[str, str],
    plan: list[tuple[int, int, int]],
    layout: str,
) -> list[dict[str, Any]]:
    def find(path: str, fanout: int, size: int) -> Measurement | None:
        return next(
            (m for m in results.get(path, []) if (m.fanout, m.size_mb) == (fanout, size)), None
        )

    out: list[dict[str, Any]] = []
    for fanout, size, reps in plan:
        params = {
            "size_mb": size,
            "receivers": fanout,
            "layout": layout,
            "repetitions": reps,
            "dtype": "float32",
            "sender_call": "broadcast" if fanout > 1 else "send",
        }
        raw, paho = find("raw_tcp", fanout, size), find("plain_paho", fanout, size)
        for path in PATHS:
            name = f"transport_{path}_1to{fanout}_{size}mb"
            base_path = {
                "raw_tcp": "raw_tcp",
                "plain_paho": "raw_tcp",
                "mqtt_bridge": "plain_paho",
                "p2p_bridge": "raw_tcp",
            }[path]
            base = find(base_path, fanout, size)
            row: dict[str, Any] = {
                "name": name,
                "params": {**params, "path": PATHS[path], "baseline_path": PATHS[base_path]},
                "unit": "MB/s",
            }
            m = find(path, fanout, size)
            if m is None:
                out.append(
                    {
                        **row,
                        "value": None,
                        "baseline": r(base.value) if base else None,
                        "ratio": None,
                        "skipped": skipped.get(path, "not measured"),
                    }
                )
                continue
            row.update(value=r(m.value), runs=[r(x) for x in m.runs])
            row.update(baseline=r(base.value) if base else None)
            row.update(ratio=r(m.value / base.value, 3) if base else None)
            if path == "mqtt_bridge":
                row.update(
                    target=f">= {MQTT_VS_PAHO} x plain paho",
                    target_met=None if base is None else m.value >= MQTT_VS_PAHO * base.value,
                )
                row.update(ratio_to_raw_tcp=r(m.value / raw.value, 3) if raw else None)
            if path == "p2p_bridge":
                # The physical limit is raw TCP "between two processes": one to
                # one. One to eight prints its ratio, to a raw 1:8 fan-out, without a verdict.
                if size == 100 and fanout == 1:
                    row.update(
                        target=f">= {P2P_VS_RAW} x raw loopback TCP at 100 MB",
                        target_met=None if base is None else m.value >= P2P_VS_RAW * base.value,
                    )
                row.update(ratio_to_plain_paho=r(m.value / paho.value, 3) if paho else None)
            row["peak_rss_mb"] = {k: r(v) for k, v in m.rss.items()}
            if m.breakdown:
                row["breakdown_s"] = {k: r(v, 3) for k, v in m.breakdown.items()}
            out.append(row)
        for path in ("mqtt_bridge", "p2p_bridge"):
            m = find(path, fanout, size)
            budget = RSS_SLOPE * size + RSS_BASE_MB
            row = {
                "name": f"transport_{path}_1to{fanout}_{size}mb_bridge_peak_rss",
                "params": {
                    **params,
                    "path": PATHS[path],
                    "baseline_path": "budget: 1.5 x message + 100 MB",
                },
                "unit": "MB",
                "baseline": budget,
            }
            if m is None:
                out.append(
                    {
                        **row,
                        "value": None,
                        "ratio": None,
                        "skipped": skipped.get(path, "not measured"),
                    }
                )
                continue
            peak = max(m.rss["sender_bridge"], m.rss["receiver_bridge"])
            out.append(
                {
                    **row,
                    "value": r(peak),
                    "ratio": r(peak / budget, 3),
                    "target": "<= 1.5 x message size + 100 MB",
                    "target_met": peak <= budget,
                    "sender_bridge_mb": r(m.rss["sender_bridge"]),
                    "receiver_bridge_max_mb": r(m.rss["receiver_bridge"]),
                    "sender_sdk_mb": r(m.rss["sender"]),
                    "receiver_sdk_max_mb": r(m.rss["receiver"]),
                    "idle_bridge_rss_mb": {k: r(v) for k, v in m.idle_rss.items()},
                    "broker_mb": r(m.rss.get("broker")),
                }
            )
    return out


def _cells(values: list[Any], widths: list[int]) -> str:
    """One table line: the first value left-aligned, the others right-aligned."""
    texts = ["-" if v is None else str(v) for v in values]
    first = f"{texts[0]:<{widths[0]}}"
    return " ".join([first, *(f"{t:>{w}}" for t, w in zip(texts[1:], widths[1:], strict=True))])


def _where(row: dict[str, Any]) -> list[Any]:
    p = row["params"]
    path = row["name"].split("_1to")[0].removeprefix("transport_")
    return [path, f"1:{p['receivers']}", f"{p['size_mb']}MB"]


def _verdict(row: dict[str, Any]) -> str:
    if row.get("skipped"):
        return "skipped"
    met = row.get("target_met")
    return "-" if met is None else ("MET" if met else "MISSED")


def table(out: list[dict[str, Any]]) -> None:
    """The human-readable summary of `out`: throughput, peak RSS, where the time goes."""
    widths = [12, 4, 6, 8, 10, 9, 6, 7]
    print()
    print(
        _cells(["path", "fan", "size", "MB/s", "baseline", "base MB/s", "ratio", "target"], widths)
    )
    for row in (row for row in out if row["unit"] == "MB/s"):
        base = next(k for k, v in PATHS.items() if v == row["params"]["baseline_path"])
        values = [row["value"], base, row["baseline"], row["ratio"], _verdict(row)]
        print(_cells([*_where(row), *values], widths))

    print("\npeak RSS (MB): VmHWM per process, reset before each transfer;")
    print("idle = a bridge that joined the channel, before any transfer")
    widths = [12, 4, 6, 8, 8, 7, 7, 8, 8, 7, 13]
    header = ["path", "fan", "size", "snd-brg", "rcv-brg", "budget", "target"]
    print(_cells([*header, "snd-SDK", "rcv-SDK", "broker", "idle snd/rcv"], widths))
    for row in (row for row in out if row["unit"] == "MB"):
        idle = row.get("idle_bridge_rss_mb") or {}
        values = [
            row.get("sender_bridge_mb"),
            row.get("receiver_bridge_max_mb"),
            row["baseline"],
            _verdict(row),
            row.get("sender_sdk_mb"),
            row.get("receiver_sdk_max_mb"),
            row.get("broker_mb"),
            f"{idle.get('sender_bridge', '-')}/{idle.get('receiver_bridge', '-')}",
        ]
        print(_cells([*_where(row), *values], widths))

    print("\nwhere the time goes (bridged paths, medians): wall seconds of each stage, one")
    print("after the other; then CPU seconds per role (summed over the role's processes)")
    widths = [12, 4, 6, 6, 7, 8, 8, 8, 7, 6, 7, 7]
    stages = ["total", "upload", "brg->brg", "download"]
    roles = ["sender", "sender_bridge", "broker", "receiver_bridge", "receiver"]
    cpu_header = ["cpu:SDK", "brg", "broker", "brg", "SDK"]
    print(_cells(["path", "fan", "size", *stages, *cpu_header], widths))
    for row in out:
        b = row.get("breakdown_s") or {}
        if row["unit"] != "MB/s" or "to_receiving_bridge_s" not in b:
            continue
        upload = b["sender_call_s"]
        times = [b["total_s"], upload, b["to_receiving_bridge_s"] - upload]
        times.append(b["bridge_to_receiver_sdk_s"])
        cpu = [b.get(f"cpu_{role}_s") for role in roles]
        texts = [None if v is None else f"{v:.2f}" for v in [*times, *cpu]]
        print(_cells([*_where(row), *texts], widths))

    for row in out:
        if row.get("skipped"):
            print(f"\nskipped {_where(row)[0]}: {row['skipped']}")
            break


# --- main ------------------------------------------------------------------------


def p2p_available() -> str:
    """Empty when the p2p transport imports, else why the p2p rows are skipped."""
    check = subprocess.run(
        [sys.executable, "-c", "import flame.flamelet.dataplane.p2p"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check.returncode == 0:
        return ""
    last = (check.stderr.strip().splitlines() or ["?"])[-1]
    return f"the p2p transport (flame.flamelet.dataplane.p2p) does not import: {last}"


def plan_for(quick: bool) -> list[tuple[int, int, int]]:
    """(receivers, size MB, repetitions)."""
    if quick:
        return [(1, 1, 5), (1, 100, 2), (FANOUT, 1, 3)]
    return [
        (1, 1, 10),
        (1, 100, 5),
        (1, 400, 3),
        (FANOUT, 1, 5),
        (FANOUT, 100, 3),
        (FANOUT, 400, 1),
    ]


def run(
    args: argparse.Namespace, procs: Processes
) -> tuple[dict[str, list[Measurement]], dict[str, str]]:
    plan = args.plan
    paths = args.paths.split(",")
    results: dict[str, list[Measurement]] = {}
    skipped: dict[str, str] = {}
    broker, port = start_mosquitto(procs)
    started = time.monotonic()
    for path in paths:
        print(f"{path} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        if path == "p2p_bridge" and (reason := p2p_available()):
            skipped[path] = reason
            print(f"  skipped: {reason}", file=sys.stderr)
            continue
        up = time.monotonic()
        if path == "raw_tcp":
            top = start_tcp(procs)
        elif path == "plain_paho":
            top = start_paho(procs, broker, port)
        else:
            top = start_bridged(procs, path.removesuffix("_bridge"), broker, port)
        print(f"  {len(top.procs)} processes up in {time.monotonic() - up:.1f} s", file=sys.stderr)
        try:
            results[path] = run_path(top, plan, args.layout, args.profile)
        finally:
            procs.stop(top.procs)
    return results, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1, 100 MB 1:1 and 1 MB 1:8")
    parser.add_argument(
        "--layout",
        choices=["tensor", "state_dict"],
        default="tensor",
        help="one tensor, or a state dict of 5 tensors of the same total size",
    )
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS)
    )
    parser.add_argument("--plan", help="instead of the default sizes: RECEIVERS:MB:REPETITIONS,...")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the largest 1:1 bridged transfers into this folder"
    )
    parser.add_argument(
        "--trace-memory",
        type=Path,
        help="tracemalloc in each bridge: what it held at its peak, into this folder (slows it)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    parser.add_argument(
        "--self-test-corruption",
        action="store_true",
        help="flip one received bit in the last receiver: the run must fail",
    )
    args = parser.parse_args()
    global FLIP_ONE_BIT, TRACE_MEMORY
    FLIP_ONE_BIT = args.self_test_corruption
    if args.trace_memory:
        args.trace_memory.mkdir(parents=True, exist_ok=True)
        TRACE_MEMORY = args.trace_memory
    if args.plan:
        args.plan = [tuple(int(x) for x in item.split(":")) for item in args.plan.split(",")]
    else:
        args.plan = plan_for(args.quick)
    folder = Path(tempfile.mkdtemp(prefix="flame-bench-"))
    load_before = os.getloadavg()[0]
    if load_before > 1.0:
        print(
            f"warning: load average {load_before:.1f} before the run: other work on this "
            f"machine ({os.cpu_count()} cores) will lower the figures",
            file=sys.stderr,
        )
    busy0, own0, wall0 = busy_seconds(), own_seconds(), time.monotonic()
    procs = Processes(folder)
    atexit.register(procs.stop_all)

    def interrupted(signum: int, frame: Any) -> None:
        # Once: the cleanup that follows must not be interrupted in turn.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    failed = False
    try:
        results, skipped = run(args, procs)
    except BenchError as exc:
        failed = True
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
    finally:
        procs.stop_all()
        leftovers = [p.name for p in procs.children if p.alive()]
        if leftovers:
            print(f"processes still running: {leftovers}", file=sys.stderr)
        if args.keep_logs or failed:
            print(f"worker logs: {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if failed:
        sys.exit(1)
    wall = time.monotonic() - wall0
    foreign = max(0.0, (busy_seconds() - busy0) - (own_seconds() - own0))
    share = round(foreign / (wall * (os.cpu_count() or 1)), 3)
    machine = {"cores": os.cpu_count(), "run_seconds": round(wall, 1), "other_cpu_share": share}
    out = rows(results, skipped, args.plan, args.layout)
    for row in out:
        row["params"]["machine"] = machine
        print(json.dumps(row))
    table(out)
    busy = " -- the figures are depressed: run again on a quiet machine" if share > 0.1 else ""
    print(
        f"\nrun: {wall:.0f} s on {os.cpu_count()} cores; other processes used {share:.0%} "
        f"of the machine meanwhile{busy}"
    )


if __name__ == "__main__":
    main()
