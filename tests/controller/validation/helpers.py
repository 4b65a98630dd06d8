"""Builders and assertions shared by the validation tests.

The converters read the original Flame's user-side JSON (camelCase, as flamectl
files hold it) into the protos; the CLI has its own, these stay test-only.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from flame.data.v1 import dataset_pb2
from flame.design.v1 import design_pb2
from flame.job.v1 import job_pb2
from flame.rpc.errors import FieldViolation, FlameError, InvalidArgument
from tests.support.examples import EXAMPLES
from tests.support.files import schema_from_dict

Json = dict[str, Any]

# --- the original examples ---------------------------------------------------


def example_json(example: str, file_name: str) -> Any:
    """One JSON file of an original example, e.g. `("mnist", "schema.json")`."""
    return json.loads((EXAMPLES / example / file_name).read_text())


def example_schema(example: str) -> design_pb2.Schema:
    """The schema of an original example as a proto."""
    return schema_from_dict(example_json(example, "schema.json"))


def example_job(example: str) -> job_pb2.Job:
    """The job of an original example with its data spec, as flamectl would send it."""
    doc = example_json(example, "job.json")
    priority = f"PRIORITY_{doc.get('priority', 'unspecified').upper()}"
    return job_pb2.Job(
        design_id=doc["designId"],
        backend=doc.get("backend", ""),
        max_run_time_seconds=doc.get("maxRunTime", 0),
        priority=job_pb2.Job.Priority.Value(priority),
        data_spec=[
            job_pb2.RoleDatasets(
                role=entry["role"],
                dataset_groups={
                    group: job_pb2.DatasetGroup(dataset_ids=ids)
                    for group, ids in entry["datasetGroups"].items()
                },
            )
            for entry in example_json(example, "dataSpec.json")
        ],
    )


def example_datasets(job: job_pb2.Job) -> dict[str, dataset_pb2.Dataset | None]:
    """A found dataset for every id the job's data spec names."""
    return {
        dataset_id: dataset_pb2.Dataset(id=dataset_id, url=f"file:///data/{dataset_id}")
        for entry in job.data_spec
        for group in entry.dataset_groups.values()
        for dataset_id in group.dataset_ids
    }


# --- zips ---------------------------------------------------------------------


def make_zip(entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    """A deflated zip archive holding `entries` in order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def valid_bundle_entries() -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    """The entries of a well-formed two-role bundle."""
    return [
        ("trainer/", b""),
        ("trainer/main.py", b"print('train')\n"),
        ("trainer/model/net.py", b"NET = 1\n"),
        ("aggregator/main.py", b"print('aggregate')\n"),
    ]


# --- assertions ---------------------------------------------------------------


def rejected(
    call: Callable[[], object], reason: str, error: type[FlameError] = InvalidArgument
) -> list[FieldViolation]:
    """Run `call`, check it raises `error` with `reason`, and return the violations."""
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error
    assert caught.value.reason == reason
    return caught.value.violations


def fields(violations: Iterable[FieldViolation]) -> list[str]:
    """The field paths of `violations`, in order."""
    return [violation.field for violation in violations]
