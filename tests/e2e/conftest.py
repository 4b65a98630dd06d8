"""The end-to-end tier: `flamectl up` on a fresh home, driven with `flamectl` as a
user would, with role code written by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.examples import EXAMPLE_DATASETS, EXAMPLES

FLAMECTL = str(Path(sys.executable).parent / "flamectl")
DEADLINE_SECONDS = 90.0


@dataclass
class Flame:
    """A local control plane and the flamectl that talks to it."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "config.yaml"

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `flamectl --config CONFIG ARGS...`."""
        result = subprocess.run(
            [FLAMECTL, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"flamectl {' '.join(args)} failed: {result.stderr}")
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def component_pid(self, name: str) -> int:
        state = json.loads((self.home / "run" / "state.json").read_text())
        return next(item["pid"] for item in state["components"] if item["name"] == name)

    def up(self) -> None:
        subprocess.run(
            [FLAMECTL, "up", "--home", str(self.home)], check=True, capture_output=True, timeout=180
        )

    def job_state(self, job_id: str) -> str:
        job = self.json("get", "job", job_id)
        assert isinstance(job, dict)
        return str(job["state"])

    def wait_for_state(self, job_id: str, *states: str) -> str:
        deadline = time.monotonic() + DEADLINE_SECONDS
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} stayed {state}, wanted {states}")


def task_processes(home: Path) -> list[int]:
    """Pids of flamelets and role code started for this home's jobs: the deployer
    runs flamelets in its work root, and each role in a task folder below it."""
    found = []
    work_root = str(home / "deployer")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if not _running(int(entry.name)):
            continue
        if cwd.startswith(work_root):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def flame(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flame]:
    """`flamectl up` in a fresh home; `flamectl down` after, leaving no process behind."""
    plane = Flame(tmp_path_factory.mktemp("flame") / "home")
    plane.up()
    state = json.loads((plane.home / "run" / "state.json").read_text())
    pids = [item["pid"] for item in state["components"]]
    try:
        yield plane
    finally:
        subprocess.run([FLAMECTL, "down", "--home", str(plane.home)], check=True, timeout=120)
    time.sleep(0.5)
    assert not [pid for pid in pids if _running(pid)], "components left running"
    assert not task_processes(plane.home), "task processes left running"


def flamelets(home: Path) -> list[int]:
    """The task processes that are flamelets: those in the work root itself."""
    work_root = str(home / "deployer")
    return [pid for pid in task_processes(home) if _cwd(pid) == work_root]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an exited orphan nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[-1].startswith("Z")


def role_zip(path: Path, roles: dict[str, str]) -> Path:
    """A code bundle with one `<role>/main.py` per role."""
    with zipfile.ZipFile(path, "w") as archive:
        for role, source in roles.items():
            archive.writestr(f"{role}/main.py", source)
    return path


def prepare_example(flame: Flame, example: str, design: str, code: Path, folder: Path) -> Path:
    """Create the example's design, schema, code and datasets with flamectl; return a
    job.json whose dataSpec names the datasets just registered."""
    source = EXAMPLES / example
    flame.run("create", "design", design, "-d", f"{example} end to end")
    flame.run("create", "schema", str(source / "schema.json"), "--design", design)
    flame.run("create", "code", str(code), "--design", design)
    data_spec = json.loads((source / "dataSpec.json").read_text())
    for role in data_spec:
        for group, ids in role["datasetGroups"].items():
            role["datasetGroups"][group] = [
                _register_dataset(flame, source, old_id, folder, design) for old_id in ids
            ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataSpec.json").write_text(json.dumps(data_spec))
    (folder / "modelSpec.json").write_text((source / "modelSpec.json").read_text())
    job = json.loads((source / "job.json").read_text())
    job["designId"] = design
    job["maxRunTime"] = 300
    (folder / "job.json").write_text(json.dumps(job))
    return folder / "job.json"


def _register_dataset(flame: Flame, source: Path, old_id: str, folder: Path, design: str) -> str:
    dataset = json.loads((source / EXAMPLE_DATASETS[source.name][old_id]).read_text())
    # Each run registers its own copy: urls are unique per user.
    dataset["url"] = f"{dataset['url']}?design={design}&dataset={old_id}"
    path = folder / f"dataset-{old_id}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataset))
    return flame.run("create", "dataset", str(path)).stdout.strip()
