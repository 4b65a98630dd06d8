"""Message files on a memory-backed file system: written once, mapped, their names gone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flame.wire.shared import (
    SHARED_FILE_MIN_BYTES,
    SharedBuffer,
    SharedFileError,
    make_shared_folder,
    map_file,
    shared_file_fits,
    write_file,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = make_shared_folder(tmp_path)
    assert made is not None
    return made


def test_the_folder_is_private_to_its_user(folder: Path) -> None:
    assert folder.stat().st_mode & 0o777 == 0o700


def test_no_folder_where_the_root_is_missing(tmp_path: Path) -> None:
    assert make_shared_folder(tmp_path / "absent") is None


def test_segments_come_back_whole_and_the_name_goes(folder: Path) -> None:
    segments = [b"head", memoryview(bytearray(range(256)) * 3), b"", b"tail"]
    path = write_file(folder, segments)
    assert path.stat().st_mode & 0o777 == 0o600
    data = map_file(path, path.stat().st_size, folder=folder)
    assert bytes(data) == b"".join(bytes(s) for s in segments)
    assert not path.exists()


def test_writing_the_mapping_never_changes_the_file(folder: Path) -> None:
    path = write_file(folder, [b"abcd"])
    os.link(path, folder / "witness")
    data = map_file(path, 4, folder=folder)
    data[0] = ord("z")
    assert bytes(data) == b"zbcd"
    assert (folder / "witness").read_bytes() == b"abcd"


def test_an_empty_message_maps_to_no_bytes(folder: Path) -> None:
    path = write_file(folder, [])
    assert bytes(map_file(path, 0, folder=folder)) == b""


@pytest.mark.parametrize("wrong", ["outside", "unprefixed", "symlink", "size", "missing"])
def test_a_file_that_is_not_the_announced_one_is_refused(
    folder: Path, tmp_path: Path, wrong: str
) -> None:
    path = write_file(folder, [b"12345678"])
    size = 8
    if wrong == "outside":
        path = path.rename(tmp_path / path.name)
    elif wrong == "unprefixed":
        path = path.rename(folder / "weights")
    elif wrong == "symlink":
        link = folder / f"{path.name}-link"
        link.symlink_to(path)
        path = link
    elif wrong == "size":
        size = 9
    else:
        path.unlink()
    with pytest.raises(SharedFileError):
        map_file(path, size, folder=folder)


def test_small_messages_stay_on_the_chunk_streams(folder: Path) -> None:
    assert not shared_file_fits(folder, SHARED_FILE_MIN_BYTES - 1)
    assert shared_file_fits(folder, SHARED_FILE_MIN_BYTES)
    # Never more than the file system holds.
    assert not shared_file_fits(folder, 1 << 60)


def test_the_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    # Above any pid_max: no such process.
    orphan = tmp_path / "flame-999999999-0123456789abcdef"
    orphan.mkdir()
    (orphan / "message-left").write_bytes(b"x")
    living = make_shared_folder(tmp_path)
    assert living is not None and living.exists()
    assert not orphan.exists()
    # A living process's folder stays.
    again = make_shared_folder(tmp_path)
    assert again is not None and living.exists()


def test_a_buffer_is_named_for_a_reader_without_a_copy(folder: Path) -> None:
    buffer = SharedBuffer(folder, 8)
    buffer.write(0, memoryview(b"weights!"))
    first, second = buffer.name(), buffer.name()
    assert bytes(map_file(first, 8, folder=folder)) == b"weights!"
    # The same bytes under each name: one file, not copies.
    assert second.stat().st_ino == buffer_inode(folder, second)
    assert bytes(map_file(second, 8, folder=folder, writable=False)) == b"weights!"


def test_a_buffer_takes_its_own_name_away_when_dropped(folder: Path) -> None:
    buffer = SharedBuffer(folder, 8)
    assert len(list(folder.iterdir())) == 1
    del buffer
    assert list(folder.iterdir()) == []


def buffer_inode(folder: Path, name: Path) -> int:
    inodes = {path.stat().st_ino for path in folder.iterdir()}
    assert len(inodes) == 1, "every name is of one file"
    return inodes.pop()
