"""Inspection of design code bundles: zip archives with one folder per role.

Nothing is extracted: the checks read the archive's central directory only, and
`role_bundle` copies entries in memory. Reading an entry never yields more than
its declared size, so the declared sizes are what the limits check.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flame.controller.validation._report import map_key, raise_if_any
from flame.controller.validation.names import validate_name
from flame.rpc.errors import FieldViolation, InvalidArgument

__all__ = [
    "CODE_INVALID",
    "CODE_ROLE_MISSING",
    "CODE_TOO_LARGE",
    "CodeBundleInfo",
    "check_roles_have_code",
    "inspect_code_bundle",
    "role_bundle",
]

CODE_INVALID = "CODE_INVALID"
CODE_TOO_LARGE = "CODE_TOO_LARGE"
CODE_ROLE_MISSING = "CODE_ROLE_MISSING"

# Ratios of plain text and source code stay far below this; zeros reach ~1000.
_BOMB_MIN_BYTES = 1024 * 1024
_BOMB_MAX_RATIO = 200
_SUPPORTED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_ENCRYPTED_FLAG = 0x1
_DRIVE_LETTER = re.compile(r"[A-Za-z]:")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# The earliest time a zip can record: role bundles must not depend on the clock.
_FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = stat.S_IFREG | 0o644
_UNIX = 3


@dataclass(frozen=True)
class CodeBundleInfo:
    """What a valid code bundle holds."""

    roles: tuple[str, ...]
    sha256: str
    size_bytes: int
    entry_count: int
    uncompressed_bytes: int


def inspect_code_bundle(
    data: bytes,
    *,
    max_bytes: int = 32 * 1024 * 1024,
    max_entries: int = 10_000,
    max_uncompressed_bytes: int = 256 * 1024 * 1024,
) -> CodeBundleInfo:
    """Check an uploaded code bundle and describe it.

    Every file must sit under a top-level folder named like a role, and every such
    folder must hold a `main.py`. Violations name entries as `code["<entry name>"]`.

    Args:
        data: The zip archive as uploaded.
        max_bytes: Largest accepted archive.
        max_entries: Most entries accepted in the archive.
        max_uncompressed_bytes: Largest accepted sum of declared entry sizes.

    Returns:
        The role folders (sorted), the archive's SHA-256, size and entry statistics.

    Raises:
        InvalidArgument: reason `CODE_TOO_LARGE` when `data` exceeds `max_bytes`,
            else `CODE_INVALID` with one violation per problem.
    """
    if len(data) > max_bytes:
        raise InvalidArgument(
            CODE_TOO_LARGE,
            f"the code bundle has {len(data)} bytes; the limit is {max_bytes}",
            metadata={"size_bytes": str(len(data)), "limit_bytes": str(max_bytes)},
            violations=[FieldViolation("code", f"larger than {max_bytes} bytes")],
        )
    infos = _read_directory(data)
    if len(infos) > max_entries:
        # Stop here: per-entry violations of that many entries would say nothing more.
        raise_if_any(
            CODE_INVALID,
            "invalid code bundle",
            [FieldViolation("code", f"{len(infos)} entries; the limit is {max_entries}")],
        )
    uncompressed = sum(info.file_size for info in infos)
    violations = _entry_violations(infos)
    if uncompressed > max_uncompressed_bytes:
        violations.append(
            FieldViolation(
                "code",
                f"entries declare {uncompressed} bytes uncompressed; "
                f"the limit is {max_uncompressed_bytes}",
            )
        )
    roles, layout_violations = _layout(infos)
    raise_if_any(CODE_INVALID, "invalid code bundle", violations + layout_violations)
    return CodeBundleInfo(
        roles=roles,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        entry_count=len(infos),
        uncompressed_bytes=uncompressed,
    )


def role_bundle(data: bytes, role: str) -> bytes:
    """Build the zip of one role: its files with their `<role>/` prefix kept.

    The output is deterministic: entries sorted by name, fixed timestamps and
    modes, so equal input gives equal bytes.

    Args:
        data: A code bundle that passed `inspect_code_bundle`.
        role: The role folder to copy.

    Returns:
        The role's zip archive.

    Raises:
        InvalidArgument: reason `CODE_ROLE_MISSING` when the bundle has no file
            under `<role>/`; `CODE_INVALID` when its entries are unsafe or corrupt.
    """
    prefix = f"{role}/"
    with _open(data) as source:
        members = sorted(
            (i for i in source.infolist() if i.filename.startswith(prefix) and not i.is_dir()),
            key=lambda info: info.filename,
        )
        if not members:
            raise InvalidArgument(
                CODE_ROLE_MISSING,
                f"the code bundle has no files under {prefix}",
                violations=[FieldViolation(map_key("code", prefix), f"no role folder {role!r}")],
            )
        # Re-checked because this output is extracted by agents, whatever the caller did.
        raise_if_any(CODE_INVALID, "invalid code bundle", _entry_violations(members))
        output = io.BytesIO()
        with zipfile.ZipFile(output, "w") as target:
            for info in members:
                target.writestr(_fixed_info(info.filename), _read(source, info))
    return output.getvalue()


def check_roles_have_code(schema_roles: Iterable[str], bundle_roles: Iterable[str]) -> None:
    """Check that every role of a schema has a folder in the code bundle.

    Args:
        schema_roles: The role names of the schema.
        bundle_roles: The role folders of the bundle (`CodeBundleInfo.roles`).

    Raises:
        InvalidArgument: reason `CODE_ROLE_MISSING`, one violation per missing role.
    """
    available = set(bundle_roles)
    violations = [
        FieldViolation(
            map_key("code", f"{role}/main.py"),
            f"role {role!r} of the schema has no {role}/main.py in the code bundle",
        )
        for role in dict.fromkeys(schema_roles)
        if role not in available
    ]
    raise_if_any(CODE_ROLE_MISSING, "code missing for schema roles", violations)


def _open(data: bytes) -> zipfile.ZipFile:
    if not data:
        raise InvalidArgument(
            CODE_INVALID,
            "the code bundle is empty",
            violations=[FieldViolation("code", "the upload holds no bytes")],
        )
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    # ValueError covers undecodable UTF-8 entry names, NotImplementedError an
    # unknown zip version; the rest are zipfile's own.
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as error:
        raise InvalidArgument(
            CODE_INVALID,
            "the code bundle is not a zip archive",
            violations=[FieldViolation("code", f"not a zip archive: {error}")],
        ) from error


def _read_directory(data: bytes) -> list[zipfile.ZipInfo]:
    with _open(data) as archive:
        infos = archive.infolist()
    if not infos:
        raise InvalidArgument(
            CODE_INVALID,
            "the code bundle is empty",
            violations=[FieldViolation("code", "the archive holds no entries")],
        )
    return infos


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    # Corrupt streams surface as the decompressor's own error type (bz2's is OSError).
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as error:
        raise InvalidArgument(
            CODE_INVALID,
            f"the code bundle entry {info.filename!r} cannot be read",
            violations=[FieldViolation(map_key("code", info.filename), str(error))],
        ) from error


def _entry_violations(infos: Sequence[zipfile.ZipInfo]) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for info in infos:
        field = map_key("code", info.filename)
        problems = [_path_problem(info.orig_filename), _content_problem(info)]
        if info.filename in seen:
            problems.append("duplicate entry name")
        seen.add(info.filename)
        violations += [FieldViolation(field, problem) for problem in problems if problem]
    return violations


def _path_problem(name: str) -> str | None:
    # `orig_filename` still holds what zipfile cuts at a NUL byte.
    if _CONTROL_CHARACTER.search(name):
        return "control characters are not allowed in entry names"
    if "\\" in name:
        return "backslashes are not allowed in entry names"
    if name.startswith("/"):
        return "absolute paths are not allowed"
    if _DRIVE_LETTER.match(name):
        return "drive letters are not allowed"
    parts = name.removesuffix("/").split("/")  # a directory entry ends with "/"
    if ".." in parts:
        return "'..' components are not allowed"
    if "" in parts or "." in parts:
        return "empty and '.' path components are not allowed"
    return None


def _content_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic links are not allowed"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special files are not allowed"
    if info.flag_bits & _ENCRYPTED_FLAG:
        return "encrypted entries are not allowed"
    if info.compress_type not in _SUPPORTED_METHODS:
        return f"compression method {info.compress_type} is not supported"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _BOMB_MIN_BYTES and ratio > _BOMB_MAX_RATIO:
        return f"compression ratio {ratio:.0f} exceeds {_BOMB_MAX_RATIO}: a zip bomb"
    return None


def _layout(infos: Sequence[zipfile.ZipInfo]) -> tuple[tuple[str, ...], list[FieldViolation]]:
    # Unsafe names are reported already; their "folders" are meaningless.
    names = [i.filename for i in infos if _path_problem(i.orig_filename) is None]
    files = {name for name in names if not name.endswith("/")}
    violations = [
        FieldViolation(map_key("code", name), "files must sit under a role folder, not the root")
        for name in sorted(files)
        if "/" not in name
    ]
    folders = sorted({name.split("/", 1)[0] for name in names if "/" in name})
    for folder in folders:
        if bad := validate_name(folder, map_key("code", f"{folder}/"), "role"):
            violations.append(bad)
        if f"{folder}/main.py" not in files:
            violations.append(
                FieldViolation(
                    map_key("code", f"{folder}/main.py"), f"role folder {folder!r} has no main.py"
                )
            )
    return tuple(folders), violations


def _fixed_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = _UNIX
    info.external_attr = _FILE_MODE << 16
    return info
