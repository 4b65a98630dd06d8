"""Helpers shared by the control-plane integration tests: per-caller stubs over the
apiserver, refusal assertions, pagination checks, code bundles, the original
Flame example inputs and snapshots of everything a user has stored."""

from __future__ import annotations

import io
import stat
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf.message import Message

from flame.cli.files import load_dataset, load_job, load_schema
from flame.compute.v1 import compute_service_pb2_grpc
from flame.data.v1 import dataset_service_pb2 as data_pb
from flame.data.v1 import dataset_service_pb2_grpc
from flame.design.v1 import code_pb2, design_pb2, design_service_pb2_grpc
from flame.design.v1 import design_service_pb2 as design_pb
from flame.job.v1 import job_pb2, job_service_pb2_grpc
from flame.job.v1 import job_service_pb2 as job_pb
from flame.rpc.errors import ErrorDetails, error_details
from flame.user.v1 import user_pb2, user_service_pb2_grpc
from flame.user.v1 import user_service_pb2 as user_pb
from tests.support.examples import EXAMPLE_DATASETS, EXAMPLES

CALL_TIMEOUT_SECONDS = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
Code = grpc.StatusCode


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- callers -----------------------------------------------------------------------


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _CallDetails(_Details, grpc.ClientCallDetails):
    pass


class _WithMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata and a deadline to every call."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout or CALL_TIMEOUT_SECONDS,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


@dataclass(frozen=True)
class Client:
    """One caller's stubs; every call carries the caller's metadata."""

    user_id: str
    designs: design_service_pb2_grpc.DesignServiceStub
    datasets: dataset_service_pb2_grpc.DatasetServiceStub
    jobs: job_service_pb2_grpc.JobServiceStub
    users: user_service_pb2_grpc.UserServiceStub
    computes: compute_service_pb2_grpc.ComputeServiceStub

    @classmethod
    def over(
        cls, channel: grpc.Channel, user_id: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> Client:
        """Stubs over `channel` sending `metadata` (possibly no credential at all)."""
        intercepted = grpc.intercept_channel(channel, _WithMetadata(metadata))
        return cls(
            user_id,
            design_service_pb2_grpc.DesignServiceStub(intercepted),
            dataset_service_pb2_grpc.DatasetServiceStub(intercepted),
            job_service_pb2_grpc.JobServiceStub(intercepted),
            user_service_pb2_grpc.UserServiceStub(intercepted),
            compute_service_pb2_grpc.ComputeServiceStub(intercepted),
        )

    @classmethod
    def with_token(cls, channel: grpc.Channel, user_id: str, token: str) -> Client:
        return cls.over(channel, user_id, bearer(token))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def new_user(
    admin: Client, channel: grpc.Channel, prefix: str, *, is_admin: bool = False
) -> Client:
    """A fresh user created by `admin`, with stubs carrying its first token."""
    name = unique(prefix)
    reply = admin.users.CreateUser(
        user_pb.CreateUserRequest(user=user_pb2.User(id=name, is_admin=is_admin))
    )
    return Client.with_token(channel, name, reply.token)


# --- refusals ----------------------------------------------------------------------


def refusal(action: Callable[[], object]) -> ErrorDetails:
    """What the client learns from a call that must fail (streamed replies are read)."""
    with pytest.raises(grpc.RpcError) as caught:
        result = action()
        if isinstance(result, Iterator):
            list(result)
    return error_details(caught.value)


def expect_refusal(
    action: Callable[[], object], code: grpc.StatusCode, reason: str, *fields: str
) -> ErrorDetails:
    """Assert a call fails with `code` and `reason`, with a violation of every `fields`."""
    details = refusal(action)
    assert (details.code, details.reason) == (code, reason), details
    reported = {violation.field for violation in details.violations}
    assert set(fields) <= reported, f"expected violations of {fields}, got {details.violations}"
    return details


def violation_of(details: ErrorDetails, field: str) -> str:
    """The description of the violation of `field`."""
    found = [v.description for v in details.violations if v.field == field]
    assert found, f"no violation of {field}: {details.violations}"
    return found[0]


def expect_hidden(action: Callable[[], object], reason: str, owner: str) -> ErrorDetails:
    """Assert a call on another user's resource answers NOT_FOUND, as if it did not
    exist, without naming the owner."""
    details = expect_refusal(action, Code.NOT_FOUND, reason)
    assert owner not in details.message and owner not in str(details.metadata), details
    return details


# --- pagination --------------------------------------------------------------------


def collect(
    list_call: Callable[[Any], Any], request: Message, field: str, page_size: int
) -> list[Any]:
    """Every item of a List call, page by page, checking each page's size."""
    items: list[Any] = []
    token = ""
    for _ in range(10_000):
        page_request = type(request)()
        page_request.CopyFrom(request)
        page_request.page_size, page_request.page_token = page_size, token  # type: ignore[attr-defined]
        response = list_call(page_request)
        page = list(getattr(response, field))
        assert len(page) <= page_size
        items += page
        token = response.next_page_token
        if not token:
            return items
        assert page, "a page with a next page token holds items"
    raise AssertionError("the pages never end")


def check_pagination(
    list_call: Callable[[Any], Any],
    request: Message,
    field: str,
    key: Callable[[Any], str],
    expected: Sequence[str],
    *,
    exclusive: bool = True,
) -> str:
    """Check a List call pages through `expected` in order, every item exactly once,
    and refuses a negative page size and a forged token. With `exclusive` false,
    the listing may hold other items around `expected` (global collections).

    Returns a next page token of the first page, to replay against other queries.
    """
    keys = [key(item) for item in collect(list_call, request, field, page_size=2)]
    assert len(keys) == len(set(keys)), f"items listed twice: {keys}"
    whole = [key(item) for item in collect(list_call, request, field, page_size=1000)]
    assert keys == whole
    if exclusive:
        assert keys == list(expected)
    else:
        assert [item for item in keys if item in set(expected)] == list(expected)
    first = type(request)()
    first.CopyFrom(request)
    first.page_size = 2  # type: ignore[attr-defined]
    token = str(list_call(first).next_page_token)
    assert token, "more than 2 items give a second page"
    _check_bad_page_requests(list_call, request)
    return token


def _check_bad_page_requests(list_call: Callable[[Any], Any], request: Message) -> None:
    huge = type(request)()
    huge.CopyFrom(request)
    huge.page_size = 1_000_000  # type: ignore[attr-defined]
    list_call(huge)  # coerced to the maximum, not refused
    negative = type(request)()
    negative.CopyFrom(request)
    negative.page_size = -1  # type: ignore[attr-defined]
    expect_refusal(
        lambda: list_call(negative), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "page_size"
    )
    forged = type(request)()
    forged.CopyFrom(request)
    forged.page_token = "not-a-token"  # type: ignore[attr-defined]
    expect_refusal(
        lambda: list_call(forged), Code.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token"
    )


def expect_foreign_token(list_call: Callable[[Any], Any], request: Message, token: str) -> None:
    """Assert a page token from another query is refused."""
    replay = type(request)()
    replay.CopyFrom(request)
    replay.page_size, replay.page_token = 2, token  # type: ignore[attr-defined]
    expect_refusal(
        lambda: list_call(replay), Code.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token"
    )


# --- code bundles ------------------------------------------------------------------


def zip_bytes(
    files: Mapping[str, bytes | str],
    *,
    entries: Iterable[tuple[zipfile.ZipInfo, bytes]] = (),
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip archive of `files` (name to content) and of raw `entries`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for info, content in entries:
            archive.writestr(info, content)
    return buffer.getvalue()


def role_code(*roles: str, version: int = 1) -> bytes:
    """A valid bundle: a `main.py` per role, its text depending on `version`."""
    return zip_bytes({f"{role}/main.py": f"print('{role} v{version}')\n" for role in roles})


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so the mode bits count
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def upload_messages(
    design_id: str, data: bytes, *, file_name: str = "code.zip", chunk_bytes: int = 256 * 1024
) -> Iterator[design_pb.UploadCodeRequest]:
    metadata = design_pb.UploadCodeMetadata(design_id=design_id, file_name=file_name)
    yield design_pb.UploadCodeRequest(metadata=metadata)
    for start in range(0, len(data), chunk_bytes):
        yield design_pb.UploadCodeRequest(chunk=data[start : start + chunk_bytes])


def upload_code(
    client: Client, design_id: str, data: bytes, **options: Any
) -> code_pb2.CodeRevision:
    return client.designs.UploadCode(upload_messages(design_id, data, **options)).code


def download_code(
    client: Client, design_id: str, revision: int = 0
) -> tuple[code_pb2.CodeRevision, bytes]:
    request = design_pb.DownloadCodeRequest(design_id=design_id, revision=revision)
    messages = list(client.designs.DownloadCode(request))
    assert messages and messages[0].HasField("code")
    assert all(message.HasField("chunk") for message in messages[1:])
    return messages[0].code, b"".join(message.chunk for message in messages[1:])


# --- designs and the example inputs ------------------------------------------------


def example_schema(example: str) -> design_pb2.Schema:
    return load_schema(EXAMPLES / example / "schema.json")


def new_design(
    client: Client,
    *,
    schema: design_pb2.Schema | None = None,
    code: bytes | None = None,
    prefix: str = "design",
) -> str:
    """Create a design, with a first schema and code revision when given."""
    design_id = unique(prefix)
    client.designs.CreateDesign(
        design_pb.CreateDesignRequest(design=design_pb2.Design(id=design_id, name=prefix))
    )
    if schema is not None:
        client.designs.CreateSchema(
            design_pb.CreateSchemaRequest(design_id=design_id, schema=schema)
        )
    if code is not None:
        upload_code(client, design_id, code)
    return design_id


def register_example_datasets(client: Client, example: str) -> dict[str, str]:
    """Register an example's datasets; returns each one's id in `dataSpec.json` to its new id."""
    return {
        example_id: client.datasets.CreateDataset(
            data_pb.CreateDatasetRequest(dataset=load_dataset(EXAMPLES / example / name).message)
        ).dataset.id
        for example_id, name in EXAMPLE_DATASETS[example].items()
    }


def example_job(example: str, design_id: str, dataset_ids: Mapping[str, str]) -> job_pb2.Job:
    """The example's job (`job.json` with its data and model spec) for `design_id`,
    its dataset ids replaced through `dataset_ids`."""
    job = load_job(EXAMPLES / example / "job.json").message
    job.design_id = design_id
    for entry in job.data_spec:
        for group in entry.dataset_groups.values():
            group.dataset_ids[:] = [dataset_ids[item] for item in group.dataset_ids]
    return job


@dataclass(frozen=True)
class Example:
    """An example ready to run: its design (schema and code revision 1), its
    registered datasets and the job to create."""

    design_id: str
    datasets: dict[str, str]
    job: job_pb2.Job


def prepare_example(client: Client, example: str) -> Example:
    schema = example_schema(example)
    code = role_code(*(role.name for role in schema.roles))
    design_id = new_design(client, schema=schema, code=code, prefix=example.replace("_", "-"))
    datasets = register_example_datasets(client, example)
    return Example(design_id, datasets, example_job(example, design_id, datasets))


def create_job(client: Client, job: job_pb2.Job) -> job_pb2.Job:
    return client.jobs.CreateJob(job_pb.CreateJobRequest(job=job)).job


def list_tasks(client: Client, job_id: str) -> list[Any]:
    return collect(client.jobs.ListTasks, job_pb.ListTasksRequest(job_id=job_id), "tasks", 1000)


# --- snapshots ---------------------------------------------------------------------


def snapshot(client: Client) -> dict[str, Any]:
    """Everything the client can read: designs with their schema and code revisions,
    datasets (with the public ones), jobs with their tasks."""
    designs = client.designs
    state: dict[str, Any] = {}
    for design in collect(designs.ListDesigns, design_pb.ListDesignsRequest(), "designs", 1000):
        key = f"design {design.id}"
        state[key] = designs.GetDesign(design_pb.GetDesignRequest(design_id=design.id))
        state[f"{key} schemas"] = collect(
            designs.ListSchemas, design_pb.ListSchemasRequest(design_id=design.id), "schemas", 1000
        )
        state[f"{key} code"] = collect(
            designs.ListCodeRevisions,
            design_pb.ListCodeRevisionsRequest(design_id=design.id),
            "revisions",
            1000,
        )
    state["datasets"] = collect(
        client.datasets.ListDatasets,
        data_pb.ListDatasetsRequest(include_public=True),
        "datasets",
        1000,
    )
    for job in collect(client.jobs.ListJobs, job_pb.ListJobsRequest(), "jobs", 1000):
        state[f"job {job.id}"] = job
        state[f"job {job.id} tasks"] = list_tasks(client, job.id)
    return state


@contextmanager
def unchanged(*clients: Client) -> Iterator[None]:
    """Assert that nothing any of `clients` can read changes within the block."""
    before = [snapshot(client) for client in clients]
    yield
    assert [snapshot(client) for client in clients] == before
