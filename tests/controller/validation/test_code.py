"""inspect_code_bundle, role_bundle and check_roles_have_code, on zips built in memory."""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.controller.validation import (
    CODE_INVALID,
    CODE_ROLE_MISSING,
    CODE_TOO_LARGE,
    CodeBundleInfo,
    check_roles_have_code,
    inspect_code_bundle,
    role_bundle,
)
from flame.rpc.errors import InvalidArgument
from tests.controller.validation.helpers import fields, make_zip, rejected, valid_bundle_entries

Entries = list[tuple[str | zipfile.ZipInfo, bytes]]
VALID = make_zip(valid_bundle_entries())


def with_entries(*extra: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    return make_zip([*valid_bundle_entries(), *extra])


def code_violations(data: bytes, **limits: int) -> list[str]:
    return fields(rejected(lambda: inspect_code_bundle(data, **limits), CODE_INVALID))


def with_mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def patch_central_record(data: bytes, name: str, offset: int, value: bytes) -> bytes:
    """Overwrite bytes of the central-directory record of `name` (zipfile cannot write them)."""
    start = data.index(b"PK\x01\x02")
    while data[start + 46 : start + 46 + len(name)] != name.encode():
        start = data.index(b"PK\x01\x02", start + 1)
    return data[: start + offset] + value + data[start + offset + len(value) :]


# --- inspect_code_bundle: accepted ------------------------------------------


def test_a_valid_bundle_is_described() -> None:
    assert inspect_code_bundle(VALID) == CodeBundleInfo(
        roles=("aggregator", "trainer"),
        sha256=hashlib.sha256(VALID).hexdigest(),
        size_bytes=len(VALID),
        entry_count=4,
        uncompressed_bytes=sum(len(data) for _, data in valid_bundle_entries()),
    )


def test_small_highly_compressible_files_are_not_bombs() -> None:
    inspect_code_bundle(with_entries(("trainer/weights.bin", bytes(512 * 1024))))


# --- inspect_code_bundle: rejected as a whole -------------------------------


def test_a_bundle_above_max_bytes_is_too_large() -> None:
    violations = rejected(
        lambda: inspect_code_bundle(VALID, max_bytes=len(VALID) - 1), CODE_TOO_LARGE
    )
    assert fields(violations) == ["code"]


@pytest.mark.parametrize("data", [b"", b"not a zip", VALID[: len(VALID) // 2]])
def test_bytes_that_are_no_zip_are_rejected(data: bytes) -> None:
    assert code_violations(data) == ["code"]


def test_a_zip_without_entries_is_rejected() -> None:
    assert code_violations(make_zip([])) == ["code"]


def test_more_entries_than_max_entries_are_rejected() -> None:
    assert code_violations(VALID, max_entries=3) == ["code"]


def test_more_declared_uncompressed_bytes_than_the_limit_are_rejected() -> None:
    total = inspect_code_bundle(VALID).uncompressed_bytes
    assert code_violations(VALID, max_uncompressed_bytes=total - 1) == ["code"]


# --- inspect_code_bundle: rejected entries ----------------------------------


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("../evil.py", 'code["../evil.py"]'),
        ("trainer/../../evil.py", 'code["trainer/../../evil.py"]'),
        ("/etc/passwd", 'code["/etc/passwd"]'),
        ("C:/trainer/main.py", 'code["C:/trainer/main.py"]'),
        ("trainer\\evil.py", 'code["trainer\\\\evil.py"]'),
        ("trainer/./main2.py", 'code["trainer/./main2.py"]'),
        ("trainer//main2.py", 'code["trainer//main2.py"]'),
        ("trainer/ev\x01il.py", 'code["trainer/ev\\u0001il.py"]'),
    ],
)
def test_unsafe_entry_names_are_rejected(name: str, field: str) -> None:
    # Field paths JSON-quote the entry name, so escapes appear escaped.
    assert code_violations(with_entries((name, b"x"))) == [field]


def test_a_nul_byte_in_an_entry_name_is_rejected() -> None:
    # zipfile cuts names at NUL when reading; the check sees the original name.
    data = patch_central_record(
        with_entries(("trainer/evil.pyX", b"x")), "trainer/evil.pyX", 46 + 15, b"\0"
    )
    assert code_violations(data) == ['code["trainer/evil.py"]']


def test_symbolic_links_are_rejected() -> None:
    link = with_mode("trainer/link", 0o120777)
    assert code_violations(with_entries((link, b"/etc/passwd"))) == ['code["trainer/link"]']


def test_special_files_are_rejected() -> None:
    fifo = with_mode("trainer/fifo", stat.S_IFIFO | 0o644)
    assert code_violations(with_entries((fifo, b""))) == ['code["trainer/fifo"]']


def test_encrypted_entries_are_rejected() -> None:
    data = patch_central_record(VALID, "trainer/model/net.py", 8, b"\x01\x00")
    assert code_violations(data) == ['code["trainer/model/net.py"]']


def test_unsupported_compression_methods_are_rejected() -> None:
    deflate64 = b"\x09\x00"
    data = patch_central_record(VALID, "trainer/model/net.py", 10, deflate64)
    assert code_violations(data) == ['code["trainer/model/net.py"]']


def test_a_zip_bomb_entry_is_rejected() -> None:
    bomb = with_entries(("trainer/zeros.bin", bytes(50 * 1024 * 1024)))
    assert len(bomb) < 1024 * 1024
    assert code_violations(bomb) == ['code["trainer/zeros.bin"]']


def test_duplicate_entry_names_are_rejected() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
        data = with_entries(("trainer/main.py", b"print('again')\n"))
    assert code_violations(data) == ['code["trainer/main.py"]']


def test_files_at_the_root_are_rejected() -> None:
    assert code_violations(with_entries(("README.md", b"hi"))) == ['code["README.md"]']


def test_a_top_level_folder_needs_a_main_py() -> None:
    assert code_violations(with_entries(("lib/util.py", b""))) == ['code["lib/main.py"]']


def test_a_folder_nested_one_level_too_deep_is_rejected() -> None:
    data = make_zip([("mnist/trainer/main.py", b""), ("mnist/aggregator/main.py", b"")])
    assert code_violations(data) == ['code["mnist/main.py"]']


def test_top_level_folders_must_be_valid_role_names() -> None:
    assert code_violations(with_entries(("my role/main.py", b""))) == ['code["my role/"]']


def test_every_entry_violation_is_reported_at_once() -> None:
    data = make_zip([("../evil.py", b""), ("README.md", b""), ("lib/util.py", b"")])
    assert code_violations(data) == [
        'code["../evil.py"]',
        'code["README.md"]',
        'code["lib/main.py"]',
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_fail_only_as_invalid_argument(data: bytes) -> None:
    try:
        inspect_code_bundle(data)
    except InvalidArgument as error:
        assert error.reason == CODE_INVALID


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6))
def test_corrupted_bundles_fail_only_as_invalid_argument(patches: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for index, value in patches:
        data[index] = value
    for call in (
        lambda: inspect_code_bundle(bytes(data)),
        lambda: role_bundle(bytes(data), "trainer"),
    ):
        try:
            call()
        except InvalidArgument as error:
            assert error.reason in (CODE_INVALID, CODE_ROLE_MISSING)


# --- role_bundle ---------------------------------------------------------------


def test_a_role_bundle_holds_only_that_role_with_its_prefix() -> None:
    with zipfile.ZipFile(io.BytesIO(role_bundle(VALID, "trainer"))) as archive:
        assert archive.namelist() == ["trainer/main.py", "trainer/model/net.py"]
        assert archive.read("trainer/main.py") == b"print('train')\n"
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_role_bundle_is_deterministic() -> None:
    # Same files in another order, written at other times: the same role bundle.
    reordered = make_zip(
        [
            (zipfile.ZipInfo(name, date_time=(2024, 5, 17, 12, 0, 0)), data)
            for name, data in reversed(valid_bundle_entries())
            if isinstance(name, str)
        ]
    )
    assert reordered != VALID
    assert role_bundle(VALID, "trainer") == role_bundle(VALID, "trainer")
    assert role_bundle(reordered, "trainer") == role_bundle(VALID, "trainer")


def test_a_role_bundle_of_a_missing_role_is_rejected() -> None:
    violations = rejected(lambda: role_bundle(VALID, "ghost"), CODE_ROLE_MISSING)
    assert fields(violations) == ['code["ghost/"]']


def test_a_role_bundle_refuses_unsafe_entries_of_the_role() -> None:
    data = with_entries(("trainer/../../evil.py", b""))
    violations = rejected(lambda: role_bundle(data, "trainer"), CODE_INVALID)
    assert fields(violations) == ['code["trainer/../../evil.py"]']


def test_a_role_bundle_of_corrupt_data_is_rejected() -> None:
    stored = zipfile.ZipInfo("trainer/main.py")
    stored.compress_type = zipfile.ZIP_STORED
    data = make_zip([(stored, b"print('train')\n")]).replace(b"'train'", b"'TRAIN'")
    violations = rejected(lambda: role_bundle(data, "trainer"), CODE_INVALID)
    assert fields(violations) == ['code["trainer/main.py"]']


# --- check_roles_have_code -----------------------------------------------------


def test_roles_with_code_pass() -> None:
    check_roles_have_code(["trainer", "aggregator"], ("aggregator", "trainer", "extra"))


def test_schema_roles_without_code_are_listed() -> None:
    violations = rejected(
        lambda: check_roles_have_code(["trainer", "middle", "top"], ("trainer",)),
        CODE_ROLE_MISSING,
    )
    assert fields(violations) == ['code["middle/main.py"]', 'code["top/main.py"]']
