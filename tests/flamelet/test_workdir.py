"""The work folder: config as given, code bundles unpacked safely or refused."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from flame.agent.v1 import agent_pb2
from flame.flamelet.api import Download
from flame.flamelet.workdir import (
    PrepareError,
    WorkArea,
    check_bundle,
    check_name,
    extract_bundle,
    write_config,
)
from tests.flamelet.conftest import ROLE, bundle


def write_bundle(path: Path, files: dict[str, str | bytes]) -> Path:
    path.write_bytes(bundle(files))
    return path


def test_a_bundle_unpacks_under_its_role_and_returns_main(tmp_path: Path) -> None:
    zipped = write_bundle(tmp_path / "b.zip", {f"{ROLE}/main.py": "x", f"{ROLE}/lib/util.py": "y"})
    folder = tmp_path / "work"
    folder.mkdir()

    main = extract_bundle(zipped, folder, ROLE)

    assert main == folder / ROLE / "main.py"
    assert (folder / ROLE / "lib" / "util.py").read_text() == "y"


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("/etc/evil.py", "not a relative path"),
        (f"{ROLE}/../../evil.py", "leaves the work folder"),
        (f"{ROLE}\\..\\evil.py", "not a relative path"),
        ("other/main.py", f"outside {ROLE}/"),
        ("config.json", f"outside {ROLE}/"),
    ],
)
def test_entries_outside_the_role_folder_are_refused(
    tmp_path: Path, name: str, complaint: str
) -> None:
    zipped = write_bundle(tmp_path / "b.zip", {f"{ROLE}/main.py": "x", name: "evil"})
    folder = tmp_path / "work"
    folder.mkdir()

    with pytest.raises(PrepareError, match=complaint):
        extract_bundle(zipped, folder, ROLE)
    assert list(folder.iterdir()) == []


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    zipped = tmp_path / "b.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr(f"{ROLE}/main.py", "x")
        link = zipfile.ZipInfo(f"{ROLE}/passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")

    with pytest.raises(PrepareError, match="link or special file"):
        extract_bundle(zipped, tmp_path, ROLE)


def test_a_bundle_without_main_or_not_a_zip_is_refused(tmp_path: Path) -> None:
    no_main = write_bundle(tmp_path / "b.zip", {f"{ROLE}/other.py": "x"})
    with pytest.raises(PrepareError, match=f"no {ROLE}/main.py"):
        extract_bundle(no_main, tmp_path, ROLE)
    not_zip = tmp_path / "n.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(PrepareError, match="not a valid zip"):
        extract_bundle(not_zip, tmp_path, ROLE)


def test_check_bundle_compares_size_and_digest_with_the_manifest() -> None:
    manifest = agent_pb2.TaskManifest(code_size_bytes=10, code_sha256="AB" * 32)
    check_bundle(Download(10, "ab" * 32), manifest)
    with pytest.raises(PrepareError, match="received more than 10"):
        check_bundle(Download(11, "ab" * 32), manifest)
    with pytest.raises(PrepareError, match="digest mismatch"):
        check_bundle(Download(10, "cd" * 32), manifest)


def test_the_config_is_written_as_given_and_private(tmp_path: Path) -> None:
    config = '{"taskid": "t1", "z": 1, "a": 2}'
    path = write_config(tmp_path, agent_pb2.TaskManifest(config_json=config))
    assert path.read_text() == config
    assert path.stat().st_mode & 0o777 == 0o600


def test_folder_names_must_be_plain(tmp_path: Path) -> None:
    assert check_name("job-1.a_b", "job id") == "job-1.a_b"
    for bad in ("..", "a/b", "", "-x", ".hidden"):
        with pytest.raises(ValueError):
            check_name(bad, "job id")


def test_a_shared_root_keeps_the_job_folder_while_a_sibling_task_uses_it(tmp_path: Path) -> None:
    first, second = (WorkArea(tmp_path, "job", task, owned_root=False) for task in ("t1", "t2"))
    first.create(), second.create()

    first.remove()
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["t2"]
    second.remove()
    assert list(tmp_path.iterdir()) == []


def test_the_job_venv_stays_for_a_sibling_task_and_goes_with_the_last(tmp_path: Path) -> None:
    first, second = (WorkArea(tmp_path, "job", task, owned_root=False) for task in ("t1", "t2"))
    first.create(), second.create()
    first.venv_dir.mkdir()
    first.venv_lock.touch()

    first.remove()
    assert first.venv_dir.exists()
    second.remove()
    assert list(tmp_path.iterdir()) == []


def test_an_owned_root_goes_entirely(tmp_path: Path) -> None:
    root = tmp_path / "root"
    area = WorkArea(root, "job", "task", owned_root=True)
    area.create()
    area.remove()
    assert not root.exists()
