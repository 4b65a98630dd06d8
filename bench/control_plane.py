#!/usr/bin/env python3
"""Control-plane benchmark: what the apiserver adds on top of the controller.

Starts the embedded control plane (`flamectl up` in a temporary home), then
creates datasets and jobs and lists them twice in the same run: through the
apiserver (TLS, token authentication, forwarding) and straight to the controller
(TLS, internal key). Prints one JSON object per measurement, then a table.

    python bench/control_plane.py            # 1,000 datasets, 200 jobs
    python bench/control_plane.py --quick    # 100 datasets, 20 jobs
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from flame.controlplane import metadata as md
from flame.data.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from flame.design.v1 import design_pb2, design_service_pb2, design_service_pb2_grpc
from flame.embedded import plane
from flame.job.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from flame.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc

SCHEMA = design_pb2.Schema(
    name="bench",
    roles=[
        design_pb2.Role(
            name="trainer",
            is_data_consumer=True,
            group_association=[design_pb2.GroupAssociation(channel_groups={"param": "us"})],
        ),
        design_pb2.Role(
            name="aggregator",
            replica=1,
            group_association=[design_pb2.GroupAssociation(channel_groups={"param": "us"})],
        ),
    ],
    channels=[
        design_pb2.Channel(
            name="param",
            pair=["trainer", "aggregator"],
            group_by=design_pb2.GroupBy(type="tag", value=["us"]),
            func_tags={
                "trainer": design_pb2.FunctionTags(tags=["fetch", "upload"]),
                "aggregator": design_pb2.FunctionTags(tags=["distribute", "aggregate"]),
            },
        )
    ],
)


@dataclass
class Target:
    """One way into the control plane: a channel and the metadata each call carries."""

    name: str
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]


def code_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for role in ("trainer", "aggregator"):
            archive.writestr(f"{role}/main.py", "print('noop')\n")
    return buffer.getvalue()


async def timed_pairs(
    first: Callable[[int], Awaitable[object]],
    second: Callable[[int], Awaitable[object]],
    count: int,
) -> tuple[list[float], list[float]]:
    """Run `first(i)` then `second(i)` for each i; the latencies of each, in seconds.

    Alternating keeps both paths on the same database state: run one after the other,
    the second would meet a fuller database and look slower for it."""
    latencies: tuple[list[float], list[float]] = ([], [])
    for index in range(count):
        for operation, found in ((first, latencies[0]), (second, latencies[1])):
            start = time.perf_counter()
            await operation(index)
            found.append(time.perf_counter() - start)
    return latencies


async def prepare_design(target: Target, design_id: str) -> None:
    designs = design_service_pb2_grpc.DesignServiceStub(target.channel)
    await designs.CreateDesign(
        design_service_pb2.CreateDesignRequest(design=design_pb2.Design(id=design_id)),
        metadata=target.metadata,
        timeout=30,
    )
    await designs.CreateSchema(
        design_service_pb2.CreateSchemaRequest(design_id=design_id, schema=SCHEMA),
        metadata=target.metadata,
        timeout=30,
    )
    data = code_zip()
    messages = [
        design_service_pb2.UploadCodeRequest(
            metadata=design_service_pb2.UploadCodeMetadata(design_id=design_id, file_name="c.zip")
        ),
        design_service_pb2.UploadCodeRequest(chunk=data),
    ]
    await designs.UploadCode(iter(messages), metadata=target.metadata, timeout=30)


class Workload:
    """The benchmark's operations as one caller: datasets, jobs over them, listings."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.datasets = dataset_service_pb2_grpc.DatasetServiceStub(target.channel)
        self.jobs = job_service_pb2_grpc.JobServiceStub(target.channel)
        self.design_id = f"bench-{target.name}"
        self.dataset_ids: list[str] = []

    async def create_dataset(self, index: int) -> None:
        dataset = dataset_pb2.Dataset(
            name=f"d{index}",
            url=f"file:///data/{self.target.name}/{index}.npz",
            data_format="npz",
            realm="default/us",
            is_public=True,
        )
        reply = await self.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(dataset=dataset),
            metadata=self.target.metadata,
            timeout=30,
        )
        self.dataset_ids.append(reply.dataset.id)

    async def create_job(self, index: int) -> None:
        group = job_pb2.DatasetGroup(dataset_ids=[self.dataset_ids[index % len(self.dataset_ids)]])
        spec = job_pb2.Job(
            name=f"j{index}",
            design_id=self.design_id,
            backend="mqtt",
            data_spec=[job_pb2.RoleDatasets(role="trainer", dataset_groups={"us": group})],
        )
        await self.jobs.CreateJob(
            job_service_pb2.CreateJobRequest(job=spec), metadata=self.target.metadata, timeout=30
        )

    async def list_datasets(self, _: int) -> None:
        await self._list_all(self.datasets.ListDatasets, dataset_service_pb2.ListDatasetsRequest)

    async def list_jobs(self, _: int) -> None:
        await self._list_all(self.jobs.ListJobs, job_service_pb2.ListJobsRequest)

    async def _list_all(self, call: Callable[..., Awaitable[object]], request_type: type) -> None:
        token = ""
        while True:
            reply = await call(
                request_type(page_size=100, page_token=token),
                metadata=self.target.metadata,
                timeout=30,
            )
            token = reply.next_page_token  # type: ignore[attr-defined]
            if not token:
                return


async def run_both(
    through: Workload, direct: Workload, counts: dict[str, int]
) -> dict[str, tuple[list[float], list[float]]]:
    """Each operation through the apiserver and straight to the controller, alternating."""
    await prepare_design(through.target, through.design_id)
    await prepare_design(direct.target, direct.design_id)
    results = {}
    for name, count in counts.items():
        results[name] = await timed_pairs(getattr(through, name), getattr(direct, name), count)
    return results


async def create_user(channel: grpc.aio.Channel, admin_token: str, name: str) -> str:
    reply = await user_service_pb2_grpc.UserServiceStub(channel).CreateUser(
        user_service_pb2.CreateUserRequest(user=user_pb2.User(id=name)),
        metadata=((md.AUTHORIZATION, f"Bearer {admin_token}"),),
        timeout=30,
    )
    return str(reply.token)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(
    operation: str, count: int, through: list[float], direct: list[float]
) -> dict[str, object]:
    """One measurement: apiserver throughput with the controller's as the baseline."""
    value = len(through) / sum(through)
    baseline = len(direct) / sum(direct)
    return {
        "name": f"control_plane_{operation}",
        "params": {"count": count, "path": "flamectl up apiserver", "baseline_path": "controller"},
        "value": round(value, 1),
        "unit": "ops/s",
        "p50_ms": round(statistics.median(through) * 1000, 2),
        "p99_ms": round(percentile(through, 0.99) * 1000, 2),
        "baseline": round(baseline, 1),
        "baseline_p50_ms": round(statistics.median(direct) * 1000, 2),
        "baseline_p99_ms": round(percentile(direct, 0.99) * 1000, 2),
        "ratio": round(value / baseline, 3),
        "overhead_pct": round((baseline / value - 1) * 100, 1),
    }


async def measure(home: Path, datasets: int, jobs: int) -> list[dict[str, object]]:
    components = {component.name: component for component in plane.up(home)}
    config = yaml.safe_load((home / "config.yaml").read_text())
    credentials = grpc.ssl_channel_credentials((home / "tls" / "ca.pem").read_bytes())
    internal_key = plane.internal_key_file(home).read_text()
    async with (
        grpc.aio.secure_channel(components["apiserver"].address, credentials) as public,
        grpc.aio.secure_channel(components["controller"].address, credentials) as internal,
    ):
        # Each path acts as its own user, so each lists exactly what it created.
        token = await create_user(public, config["token"], "bench-apiserver")
        through = Target("apiserver", public, ((md.AUTHORIZATION, f"Bearer {token}"),))
        direct = Target(
            "controller",
            internal,
            ((md.INTERNAL_KEY, internal_key), (md.USER, "bench-controller"), (md.ADMIN, "false")),
        )
        counts = {
            "create_dataset": datasets,
            "create_job": jobs,
            "list_datasets": 5,
            "list_jobs": 5,
        }
        results = await run_both(Workload(through), Workload(direct), counts)
    return [report(name, counts[name], *results[name]) for name in counts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 datasets and 20 jobs")
    args = parser.parse_args()
    datasets, jobs = (100, 20) if args.quick else (1000, 200)
    with tempfile.TemporaryDirectory(prefix="flame-bench-") as folder:
        home = Path(folder) / "home"
        try:
            results = asyncio.run(measure(home, datasets, jobs))
        finally:
            plane.down(home)
    for result in results:
        print(json.dumps(result))
    print()
    print(f"{'operation':<30} {'apiserver':>12} {'controller':>12} {'p99 api':>9} {'overhead':>9}")
    for result in results:
        print(
            f"{result['name']:<30} {result['value']:>8} op/s {result['baseline']:>8} op/s "
            f"{result['p99_ms']:>7}ms {result['overhead_pct']:>8}%"
        )


if __name__ == "__main__":
    main()
