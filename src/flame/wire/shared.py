"""Messages handed over as files on a memory-backed file system instead of chunk streams.

Role code and its flamelet share a host. Streaming a large message between them through
the Unix socket costs each side several copies of every byte and most of a core; a file
on a memory-backed file system (`/dev/shm`) costs the writer one copy and the reader a
mapping. `write_file` fills such a file from a frame's segments; `map_file` maps one
for reading and removes its name, so the memory goes back once the mapping is dropped.

The folder is private to the flamelet (mode 0700) and files are opened without
following links, so a name handed over can only designate a file of that folder.
"""

from __future__ import annotations

import mmap
import os
import pwd
import secrets
import shutil
import stat
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

__all__ = [
    "SHARED_FILE_MIN_BYTES",
    "SharedBuffer",
    "SharedFileError",
    "SharedFileWriter",
    "make_shared_folder",
    "map_file",
    "shared_file_fits",
    "write_file",
]

# Below this size a chunk stream costs less than creating, mapping and removing a file.
SHARED_FILE_MIN_BYTES: Final = 1 << 18
# The memory-backed file system of Linux hosts.
_SHM_ROOT: Final = Path("/dev/shm")
# Room kept free on that file system for everything else that uses it.
_SPARE_BYTES: Final = 64 << 20
_FILE_PREFIX: Final = "message-"
_FOLDER_PREFIX: Final = "flame-"
_USER: Final = pwd.getpwuid(os.getuid()).pw_name

_Bytes = bytes | bytearray | memoryview


class SharedFileError(ValueError):
    """A shared file is missing, misplaced, of the wrong size, or not a regular file."""


def make_shared_folder(root: Path = _SHM_ROOT) -> Path | None:
    """Create a private folder under `root`; None when `root` is absent or read-only.

    The folder is named after this process, so that the folders of processes that
    died without removing theirs are found and removed here (their memory with them).
    """
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        return None
    _remove_orphans(root)
    folder = root / f"{_FOLDER_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        folder.mkdir(mode=0o700)
    except OSError:
        return None
    return folder


def _remove_orphans(root: Path) -> None:
    for folder in root.glob(f"{_FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(_FOLDER_PREFIX).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and folder.owner() == _USER:
            shutil.rmtree(folder, ignore_errors=True)


def shared_file_fits(folder: Path, size: int) -> bool:
    """Whether a message of `size` bytes should travel as a file in `folder`: large
    enough to be worth it, and leaving the file system its spare room."""
    if size < SHARED_FILE_MIN_BYTES:
        return False
    try:
        usage = os.statvfs(folder)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize >= size + _SPARE_BYTES


def write_file(folder: Path, segments: Iterable[_Bytes]) -> Path:
    """Write `segments` one after the other into a new file of `folder`.

    Raises:
        OSError: The file cannot be created or written (a full file system); no file
            is left behind.
    """
    path, fd = _create(folder, os.O_WRONLY)
    try:
        offset = 0
        for segment in segments:
            offset = _write_at(fd, memoryview(segment).cast("B"), offset)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return path


class SharedFileWriter:
    """A new file of `size` bytes in `folder`, written while a reader already takes
    what is written: `write` tells how far it got as it goes.

    Raises:
        OSError: The file cannot be created (a full file system).
    """

    def __init__(self, folder: Path, size: int) -> None:
        self.path, self._fd = _create(folder, os.O_WRONLY, size)

    def write(self, segments: Iterable[_Bytes], step: int) -> Iterator[int]:
        """Write `segments` in order; yield the bytes written so far every `step`
        bytes or so, and once all are.

        Raises:
            OSError: The file system filled up meanwhile.
        """
        offset = reported = 0
        for segment in segments:
            offset = _write_at(self._fd, memoryview(segment).cast("B"), offset)
            if offset - reported >= step:
                reported = offset
                yield offset
        if offset != reported:
            yield offset

    def close(self) -> None:
        """Close the file and remove its name if the reader did not."""
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


def _new_name(folder: Path) -> Path:
    return folder / f"{_FILE_PREFIX}{secrets.token_hex(16)}"


def _create(folder: Path, access: int, size: int = 0) -> tuple[Path, int]:
    """A new private file of `folder`, opened with `access` and `size` bytes long."""
    path = _new_name(folder)
    fd = os.open(path, access | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        _discard(fd, path)
        raise
    return path, fd


def _write_at(fd: int, data: memoryview, offset: int) -> int:
    """pwrite(2) all of `data` at `offset`; returns the offset after it."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
    return offset


def map_file(
    path: str | Path, size: int, *, folder: Path | None = None, writable: bool = True
) -> memoryview:
    """Map the file `path` of `size` bytes, remove its name, and return its bytes.

    A writable mapping is private: writing to the returned view (decoded tensors are
    views of it) changes this process's copy only, never the file. A read-only one
    shows the file as it is written meanwhile.

    Args:
        path: The file.
        size: Its expected size in bytes.
        folder: When given, the file must be directly inside it.
        writable: Whether the view must be writable.

    Raises:
        SharedFileError: The file is not a regular file of `folder`, or not `size`
            bytes long, or cannot be opened.
    """
    path = Path(path)
    if folder is not None and (path.parent != folder or not path.name.startswith(_FILE_PREFIX)):
        raise SharedFileError(f"{str(path)!r} is not a message file of {str(folder)!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedFileError(f"cannot open {str(path)!r}: {exc.strerror}") from None
    try:
        _check_file(path, os.fstat(fd), size)
        # The name goes at once: the mapping keeps the memory as long as it is needed.
        path.unlink(missing_ok=True)
        if size == 0:
            return memoryview(bytearray())
        if writable:
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)
        else:
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return memoryview(mapped)


class SharedBuffer:
    """A file of a shared folder that a receiver reassembles a message into (a
    `flame.wire.MessageStore`), then `name`s for the role code to map: no byte copied.

    Chunks are written with pwrite(2): the kernel fills each new page of the file
    directly, instead of zeroing it on a fault and then having it overwritten; and the
    pages are in no process's memory until one maps them. The file's own name and
    descriptor go once the buffer is garbage; a folder left by a process that died
    goes with the next `make_shared_folder`.

    Raises:
        OSError: The file system is full.
    """

    def __init__(self, folder: Path, size: int) -> None:
        self._folder = folder
        self._size = size
        self._path, self._fd = _create(folder, os.O_RDWR, size)
        weakref.finalize(self, _discard, self._fd, self._path)

    def write(self, offset: int, data: memoryview) -> None:
        """Write `data` at `offset`."""
        _write_at(self._fd, data, offset)

    def contents(self) -> memoryview:
        """The whole message, mapped read-only."""
        if not self._size:
            return memoryview(b"")
        return memoryview(mmap.mmap(self._fd, self._size, prot=mmap.PROT_READ))

    def name(self) -> Path:
        """Give the file a new name in its folder, for a reader to `map_file`."""
        path = _new_name(self._folder)
        os.link(self._path, path)
        return path


def _discard(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)


def _check_file(path: Path, status: os.stat_result, size: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise SharedFileError(f"{str(path)!r} is not a regular file")
    if status.st_size != size:
        raise SharedFileError(f"{str(path)!r} holds {status.st_size} bytes, not {size}")
