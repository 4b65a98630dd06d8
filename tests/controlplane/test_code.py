"""Code bundles: revisions, upload and download streams, bundle validation, the
size limit and isolation between users."""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from collections.abc import Iterator

import grpc
import pytest

from flame.design.v1 import design_service_pb2 as pb
from tests.controlplane.helpers import (
    CHANNEL_OPTIONS,
    Client,
    Code,
    check_pagination,
    download_code,
    expect_foreign_token,
    expect_hidden,
    expect_refusal,
    new_design,
    new_user,
    role_code,
    symlink_entry,
    unchanged,
    unique,
    upload_code,
    upload_messages,
    violation_of,
    zip_bytes,
)
from tests.support.controlplane import ADMIN, running_control_plane

pytestmark = pytest.mark.integration

ROLES = ("trainer", "aggregator")
SMALL_LIMIT = 100_000


def test_code_revisions_upload_download_and_delete(alice: Client) -> None:
    design_id = new_design(alice)
    bundles = [role_code(*ROLES, version=n) for n in range(1, 6)]
    stored = [
        upload_code(alice, design_id, data, file_name=f"v{n}.zip")
        for n, data in enumerate(bundles, 1)
    ]
    assert [code.revision for code in stored] == [1, 2, 3, 4, 5]
    first = stored[0]
    assert first.file_name == "v1.zip" and list(first.roles) == sorted(ROLES)
    assert first.size_bytes == len(bundles[0])
    assert first.sha256 == hashlib.sha256(bundles[0]).hexdigest()
    assert first.create_time.seconds > 0

    latest, data = download_code(alice, design_id)
    assert (latest, data) == (stored[-1], bundles[-1])
    older, data = download_code(alice, design_id, revision=2)
    assert (older, data) == (stored[1], bundles[1])
    expect_refusal(
        lambda: download_code(alice, design_id, revision=6), Code.NOT_FOUND, "CODE_NOT_FOUND"
    )
    assert (
        alice.designs.GetDesign(
            pb.GetDesignRequest(design_id=design_id)
        ).design.latest_code_revision
        == 5
    )

    request = pb.ListCodeRevisionsRequest(design_id=design_id)
    token = check_pagination(
        alice.designs.ListCodeRevisions,
        request,
        "revisions",
        lambda c: str(c.revision),
        ["5", "4", "3", "2", "1"],
    )
    expect_foreign_token(
        alice.designs.ListSchemas, pb.ListSchemasRequest(design_id=design_id), token
    )

    alice.designs.DeleteCode(pb.DeleteCodeRequest(design_id=design_id))
    expect_refusal(lambda: download_code(alice, design_id), Code.NOT_FOUND, "CODE_NOT_FOUND")
    assert not alice.designs.ListCodeRevisions(request).revisions
    assert (
        alice.designs.GetDesign(
            pb.GetDesignRequest(design_id=design_id)
        ).design.latest_code_revision
        == 0
    )


def test_a_large_bundle_travels_in_many_chunks(alice: Client) -> None:
    design_id = new_design(alice)
    payload = os.urandom(3 * 1024 * 1024)  # incompressible: the archive stays this large
    data = zip_bytes({"trainer/main.py": "pass\n", "trainer/weights.bin": payload})
    stored = upload_code(alice, design_id, data, chunk_bytes=100_000)
    assert stored.size_bytes == len(data)
    request = pb.DownloadCodeRequest(design_id=design_id)
    messages = list(alice.designs.DownloadCode(request))
    assert len(messages) > 2  # metadata, then more than one chunk
    assert b"".join(m.chunk for m in messages[1:]) == data


def test_the_upload_stream_must_open_with_its_metadata(alice: Client) -> None:
    design_id = new_design(alice)
    data = role_code(*ROLES)
    metadata = pb.UploadCodeRequest(metadata=pb.UploadCodeMetadata(design_id=design_id))
    streams = {
        "metadata": [pb.UploadCodeRequest(chunk=data), metadata],
        "twice": [metadata, metadata, pb.UploadCodeRequest(chunk=data)],
        "missing": [],
    }
    with unchanged(alice):
        for name, messages in streams.items():
            details = expect_refusal(
                lambda messages=messages: alice.designs.UploadCode(iter(messages)),
                Code.INVALID_ARGUMENT,
                "CODE_INVALID",
                "metadata",
            )
            assert details.violations, name
        expect_refusal(
            lambda: upload_code(alice, design_id, b""),
            Code.INVALID_ARGUMENT,
            "CODE_INVALID",
            "code",
        )


def _bomb() -> bytes:
    # 4 MiB of zeros deflate to a few KiB: a ratio near 1000.
    return zip_bytes({"trainer/main.py": "pass\n", "trainer/zeros.bin": bytes(4 * 1024 * 1024)})


@pytest.mark.parametrize(
    ("bundle", "field", "words"),
    [
        (
            zip_bytes({"trainer/main.py": "", "../evil.py": "x"}),
            'code["../evil.py"]',
            "'..'",
        ),
        (
            zip_bytes({"trainer/main.py": "", "trainer/../../evil.py": "x"}),
            'code["trainer/../../evil.py"]',
            "'..'",
        ),
        (zip_bytes({"trainer/main.py": "", "/etc/passwd": "x"}), 'code["/etc/passwd"]', "absolute"),
        (
            zip_bytes({"trainer/main.py": ""}, entries=[symlink_entry("trainer/data", "/etc")]),
            'code["trainer/data"]',
            "symbolic link",
        ),
        (zip_bytes({"trainer/util.py": ""}), 'code["trainer/main.py"]', "no main.py"),
        (zip_bytes({"trainer/main.py": "", "main.py": ""}), 'code["main.py"]', "role folder"),
        (_bomb(), 'code["trainer/zeros.bin"]', "zip bomb"),
        (b"this is not a zip archive", "code", "not a zip"),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "absolute",
        "symlink",
        "no-main",
        "root-file",
        "bomb",
        "not-zip",
    ],
)
def test_invalid_bundles_are_refused_and_change_nothing(
    alice: Client, bundle: bytes, field: str, words: str
) -> None:
    design_id = new_design(alice, code=role_code(*ROLES))
    with unchanged(alice):
        details = expect_refusal(
            lambda: upload_code(alice, design_id, bundle),
            Code.INVALID_ARGUMENT,
            "CODE_INVALID",
            field,
        )
    assert words in violation_of(details, field)


def test_code_for_a_missing_design_is_refused(alice: Client) -> None:
    with unchanged(alice):
        expect_refusal(
            lambda: upload_code(alice, unique("absent"), role_code(*ROLES)),
            Code.NOT_FOUND,
            "DESIGN_NOT_FOUND",
        )


def test_another_users_code_is_invisible(alice: Client, bob: Client) -> None:
    design_id = new_design(alice, code=role_code(*ROLES))
    calls = [
        lambda: upload_code(bob, design_id, role_code(*ROLES, version=2)),
        lambda: download_code(bob, design_id),
        lambda: download_code(bob, design_id, revision=1),
        lambda: bob.designs.ListCodeRevisions(pb.ListCodeRevisionsRequest(design_id=design_id)),
        lambda: bob.designs.DeleteCode(pb.DeleteCodeRequest(design_id=design_id)),
    ]
    with unchanged(alice):
        for call in calls:
            expect_hidden(call, "DESIGN_NOT_FOUND", alice.user_id)


# --- the size limit, on a control plane of its own ---------------------------------


@pytest.fixture(scope="module")
def small_limit_owner(mongo_uri: str) -> Iterator[Client]:
    """A user of a control plane whose controller accepts bundles up to 100 kB."""
    database = f"flame_small_{uuid.uuid4().hex[:8]}"
    args = ("--max-code-bytes", str(SMALL_LIMIT))
    with (
        running_control_plane(mongo_uri, database, extra_controller_args=args) as plane,
        grpc.insecure_channel(plane.apiserver_address, options=CHANNEL_OPTIONS) as channel,
    ):
        admin = Client.with_token(channel, ADMIN, plane.admin_token)
        yield new_user(admin, channel, "limited")


def _bundle_of(size: int) -> bytes:
    # Stored, random content: the archive is a little larger than `size`.
    return zip_bytes({"trainer/main.py": os.urandom(size)}, compression=zipfile.ZIP_STORED)


def test_bundles_over_the_size_limit_are_refused(small_limit_owner: Client) -> None:
    owner = small_limit_owner
    design_id = new_design(owner)
    accepted = upload_code(owner, design_id, _bundle_of(SMALL_LIMIT - 1_000))
    assert accepted.size_bytes <= SMALL_LIMIT
    with unchanged(owner):
        for size in (SMALL_LIMIT + 1, 5 * SMALL_LIMIT):
            details = expect_refusal(
                lambda size=size: upload_code(owner, design_id, _bundle_of(size)),
                Code.INVALID_ARGUMENT,
                "CODE_TOO_LARGE",
                "code",
            )
            assert str(SMALL_LIMIT) in details.message
            assert details.metadata["limit_bytes"] == str(SMALL_LIMIT)
        # Sent in one message, the bundle is refused all the same.
        one_message = _bundle_of(2 * SMALL_LIMIT)
        expect_refusal(
            lambda: owner.designs.UploadCode(
                upload_messages(design_id, one_message, chunk_bytes=len(one_message))
            ),
            Code.INVALID_ARGUMENT,
            "CODE_TOO_LARGE",
            "code",
        )
