#!/usr/bin/env python3
"""Job start benchmark: how fast the embedded control plane gets a job's agents running.

Starts the embedded control plane (`flamectl up` in a temporary home) and runs a
job of N trainers and 1 aggregator whose role code does nothing, then reports the
time from StartJob until every task has run (running or finished) and until the
job completed. The baseline, measured in the same run, is the time to start and
finish N+1 bare Python interpreters one after another: the floor for N+1 agents
that each run a Python child. Then the notifier's fan-out (bench/notifier_fanout.py).

    python bench/job_start.py            # 100 trainers; fan-out to 1,000 streams
    python bench/job_start.py --quick    # 20 trainers; fan-out to 200 streams
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import grpc
import yaml

from flame.controlplane import metadata as md
from flame.data.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from flame.design.v1 import design_pb2, design_service_pb2, design_service_pb2_grpc
from flame.embedded import plane
from flame.job.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

_ROLE = design_pb2.Role
_ASSOCIATION = [design_pb2.GroupAssociation(channel_groups={"param": "default"})]
SCHEMA = design_pb2.Schema(
    name="job-start",
    roles=[
        _ROLE(name="trainer", is_data_consumer=True, group_association=_ASSOCIATION),
        _ROLE(name="aggregator", replica=1, group_association=_ASSOCIATION),
    ],
    channels=[
        design_pb2.Channel(
            name="param",
            pair=["trainer", "aggregator"],
            group_by=design_pb2.GroupBy(type="tag", value=["default"]),
            func_tags={
                "trainer": design_pb2.FunctionTags(tags=["fetch", "upload"]),
                "aggregator": design_pb2.FunctionTags(tags=["distribute", "aggregate"]),
            },
        )
    ],
)
FINISHED = ("completed", "failed", "terminated")


def noop_code() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for role in ("trainer", "aggregator"):
            archive.writestr(f"{role}/main.py", "pass\n")
    return buffer.getvalue()


async def create_job(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], trainers: int
) -> str:
    designs = design_service_pb2_grpc.DesignServiceStub(channel)
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(channel)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    design = design_pb2.Design(id="job-start")
    await designs.CreateDesign(
        design_service_pb2.CreateDesignRequest(design=design), metadata=metadata
    )
    await designs.CreateSchema(
        design_service_pb2.CreateSchemaRequest(design_id=design.id, schema=SCHEMA),
        metadata=metadata,
    )
    upload = [
        design_service_pb2.UploadCodeRequest(
            metadata=design_service_pb2.UploadCodeMetadata(
                design_id=design.id, file_name="noop.zip"
            )
        ),
        design_service_pb2.UploadCodeRequest(chunk=noop_code()),
    ]
    await designs.UploadCode(iter(upload), metadata=metadata)
    ids = []
    for index in range(trainers):
        dataset = dataset_pb2.Dataset(
            url=f"file:///data/shard-{index}.npz", data_format="npz", realm="default/us"
        )
        reply = await datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(dataset=dataset), metadata=metadata
        )
        ids.append(reply.dataset.id)
    spec = job_pb2.Job(
        name="job-start",
        design_id=design.id,
        backend="mqtt",
        data_spec=[
            job_pb2.RoleDatasets(
                role="trainer", dataset_groups={"default": job_pb2.DatasetGroup(dataset_ids=ids)}
            )
        ],
    )
    reply = await jobs.CreateJob(job_service_pb2.CreateJobRequest(job=spec), metadata=metadata)
    return str(reply.job.id)


async def time_job(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], job_id: str, tasks: int
) -> tuple[float, float]:
    """Seconds from StartJob until every task has run, and until the job completed."""
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    start = time.perf_counter()
    await jobs.StartJob(job_service_pb2.StartJobRequest(job_id=job_id), metadata=metadata)
    all_ran = None
    while time.perf_counter() - start < 300:
        job = (
            await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=metadata)
        ).job
        counts = dict(job.task_counts)
        ran = counts.get("running", 0) + sum(counts.get(state, 0) for state in FINISHED)
        if all_ran is None and ran >= tasks:
            all_ran = time.perf_counter() - start
        if job.state == job_pb2.Job.STATE_COMPLETED:
            return all_ran or time.perf_counter() - start, time.perf_counter() - start
        if job.state in (job_pb2.Job.STATE_FAILED, job_pb2.Job.STATE_TERMINATED):
            raise RuntimeError(f"the job ended {job_pb2.Job.State.Name(job.state)}: {job.reason}")
        await asyncio.sleep(0.05)
    raise TimeoutError("the job did not complete within 300 s")


def bare_interpreters(count: int) -> float:
    """Seconds to run `count` bare Python interpreters one after another."""
    start = time.perf_counter()
    for _ in range(count):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


async def measure_job(home: Path, trainers: int) -> tuple[float, float]:
    components = {component.name: component for component in plane.up(home)}
    config = yaml.safe_load((home / "config.yaml").read_text())
    credentials = grpc.ssl_channel_credentials((home / "tls" / "ca.pem").read_bytes())
    metadata = ((md.AUTHORIZATION, f"Bearer {config['token']}"),)
    async with grpc.aio.secure_channel(components["apiserver"].address, credentials) as channel:
        job_id = await create_job(channel, metadata, trainers)
        return await time_job(channel, metadata, job_id, trainers + 1)


def notifier_fanout(quick: bool) -> list[dict[str, object]]:
    """The measurements of the sibling benchmark bench/notifier_fanout.py."""
    script = Path(__file__).with_name("notifier_fanout.py")
    output = subprocess.run(
        [sys.executable, str(script), *(["--quick"] if quick else [])],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 trainers, 200 streams")
    args = parser.parse_args()
    trainers = 20 if args.quick else 100
    with tempfile.TemporaryDirectory(prefix="flame-bench-") as folder:
        home = Path(folder) / "home"
        try:
            all_running, completed = asyncio.run(measure_job(home, trainers))
        finally:
            plane.down(home)
    floor = bare_interpreters(trainers + 1)
    params = {"trainers": trainers, "aggregators": 1, "role_code": "no-op"}
    results = [
        {"name": "job_start_all_tasks_running", "params": params, "value": round(all_running, 2),
         "unit": "s", "target": 15.0, "baseline": round(floor, 2),
         "baseline_name": f"{trainers + 1} bare python interpreters, one after another",
         "ratio": round(all_running / floor, 2)},
        {"name": "job_start_to_completed", "params": params, "value": round(completed, 2),
         "unit": "s", "baseline": round(floor, 2),
         "baseline_name": f"{trainers + 1} bare python interpreters, one after another",
         "ratio": round(completed / floor, 2)},
    ]  # fmt: skip
    for result in results:
        print(json.dumps(result))
    fanout = notifier_fanout(args.quick)
    for result in fanout:
        print(json.dumps(result))
    print()
    print(f"{'measurement':<32} {'value':>10} {'baseline':>10} {'ratio':>7}")
    for result in [*results, *fanout]:
        print(f"{result['name']:<32} {result['value']:>8} {result['unit']:<2}"
              f" {result['baseline']:>9} {result['ratio']:>7}")  # fmt: skip


if __name__ == "__main__":
    main()
