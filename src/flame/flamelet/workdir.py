"""A task's work folder: the manifest's config and the role's code, unpacked safely."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flame.agent.v1 import agent_pb2
from flame.flamelet.api import Download

__all__ = [
    "CONFIG_FILE",
    "VENV_LOCK",
    "PrepareError",
    "WorkArea",
    "check_bundle",
    "check_name",
    "extract_bundle",
    "write_config",
]

CONFIG_FILE = "config.json"
VENV_LOCK = "venv.lock"

# Ids and role names become folder names: one plain path component each.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# A bundle that unpacks beyond these is refused (a zip bomb, or not role code).
_MAX_UNPACKED_BYTES = 1 << 30
_MAX_ENTRIES = 10_000
_COPY_CHUNK = 1 << 20


class PrepareError(Exception):
    """The task cannot run; the message is the reason reported with FAILED."""


def check_name(value: str, what: str) -> str:
    """Return `value` if it is safe as one folder name, else raise ValueError."""
    if not _NAME.fullmatch(value):  # the first character already rules out "." and ".."
        raise ValueError(f"{what} {value!r} must match {_NAME.pattern}")
    return value


@dataclass(frozen=True)
class WorkArea:
    """Where a task's files go: `<root>/<job>/<task>/`, and `<root>/<job>/venv`.

    Attributes:
        root: The work root.
        job_id: The job's id.
        task_id: The task's id.
        owned_root: The root was made for this flamelet alone and goes with it.
    """

    root: Path
    job_id: str
    task_id: str
    owned_root: bool

    @property
    def task_dir(self) -> Path:
        """The task's own folder; the role code runs in it."""
        return self.root / self.job_id / self.task_id

    @property
    def venv_dir(self) -> Path:
        """The job's virtual environment, shared by its tasks on this machine."""
        return self.root / self.job_id / "venv"

    @property
    def venv_lock(self) -> Path:
        """The lock of the job's venv, held while it is built or removed."""
        return self.root / self.job_id / VENV_LOCK

    def create(self) -> Path:
        """Create the task's folder, readable by its owner only, and return it."""
        self.task_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for a folder that exists.
        self.task_dir.chmod(0o700)
        return self.task_dir

    def remove(self) -> None:
        """Remove the task's folder; the job's folder too if no other task uses it.

        On a shared root, the job's venv stays while another task of the job is
        on this machine, and goes with the last one.
        """
        if self.owned_root:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        shutil.rmtree(self.task_dir, ignore_errors=True)
        self._remove_job_folder_if_unused()

    def _remove_job_folder_if_unused(self) -> None:
        job_folder = self.task_dir.parent
        try:
            fd = os.open(self.venv_lock, os.O_RDWR)
        except FileNotFoundError:  # no venv: the folder is empty unless a sibling is in it
            with contextlib.suppress(OSError):
                job_folder.rmdir()
            return
        try:
            # Not waited for: a held lock means a sibling is building the venv right now.
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # A sibling makes its task folder before it takes the lock: seen here if any.
                if set(os.listdir(job_folder)) <= {"venv", VENV_LOCK}:
                    shutil.rmtree(job_folder, ignore_errors=True)
        finally:
            os.close(fd)


def write_config(folder: Path, manifest: agent_pb2.TaskManifest) -> Path:
    """Write the manifest's config, as it came, to `config.json`."""
    path = folder / CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(manifest.config_json)
    return path


def check_bundle(download: Download, manifest: agent_pb2.TaskManifest) -> None:
    """Raise PrepareError unless the download is the bundle the manifest describes."""
    expected = manifest.code_size_bytes
    if download.size != expected:
        # The download stops just past the expected size, so a bigger one is not measured.
        received = f"more than {expected}" if download.size > expected else str(download.size)
        raise PrepareError(
            f"code bundle size mismatch: the manifest says {expected} bytes, received {received}"
        )
    if download.sha256 != manifest.code_sha256.lower():
        raise PrepareError(
            f"code bundle digest mismatch: the manifest says sha256 {manifest.code_sha256}, "
            f"received {download.sha256}"
        )


def extract_bundle(bundle: Path, folder: Path, role: str) -> Path:
    """Unpack the role's code bundle into `folder` and return `<role>/main.py`.

    Every entry must lie under `<role>/`; absolute paths, `..`, links and device
    files are refused, and nothing is written outside `folder`.

    Raises:
        PrepareError: The bundle is not a zip, breaks a rule, or has no `<role>/main.py`.
    """
    try:
        with zipfile.ZipFile(bundle) as archive:
            members = archive.infolist()
            _check_members(members, role)
            budget = _MAX_UNPACKED_BYTES
            for member in members:
                budget -= _extract(archive, member, folder, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise PrepareError(f"code bundle is not a valid zip: {error}") from error
    main = folder / role / "main.py"
    if not main.is_file():
        raise PrepareError(f"code bundle has no {role}/main.py")
    return main


def _check_members(members: list[zipfile.ZipInfo], role: str) -> None:
    if len(members) > _MAX_ENTRIES:
        raise PrepareError(f"code bundle has more than {_MAX_ENTRIES} entries")
    names: set[str] = set()
    for member in members:
        _check_member(member, role)
        if member.filename in names:
            raise PrepareError(f"code bundle entry {member.filename!r} appears twice")
        names.add(member.filename)


def _check_member(member: zipfile.ZipInfo, role: str) -> None:
    name = member.filename
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute():
        raise PrepareError(f"code bundle entry {name!r} is not a relative path")
    if ".." in path.parts:
        raise PrepareError(f"code bundle entry {name!r} leaves the work folder")
    if not path.parts or path.parts[0] != role:
        raise PrepareError(f"code bundle entry {name!r} is outside {role}/")
    kind = stat.S_IFMT(member.external_attr >> 16)
    # Zips made off Unix leave the type bits 0: a plain file or folder.
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise PrepareError(f"code bundle entry {name!r} is a link or special file")


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, budget: int) -> int:
    """Write one checked entry; return its size. Sizes are counted as read, not trusted."""
    target = folder / member.filename
    if not target.resolve().is_relative_to(folder.resolve()):
        raise PrepareError(f"code bundle entry {member.filename!r} leaves the work folder")
    if member.is_dir():
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = 0o700 if (member.external_attr >> 16) & stat.S_IXUSR else 0o600
    # O_EXCL|O_NOFOLLOW: never write through something already there.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    written = 0
    with os.fdopen(fd, "wb") as out, archive.open(member) as source:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > budget:
                raise PrepareError(f"code bundle unpacks to more than {_MAX_UNPACKED_BYTES} bytes")
            out.write(chunk)
    return written
