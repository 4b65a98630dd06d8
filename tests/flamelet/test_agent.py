"""The task lifecycle, in-process: a fake AgentService, the real notifier on SecantusDB."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flame.agent.v1 import agent_pb2
from flame.flamelet.agent import EXIT_AGENT_FAILED, EXIT_OK
from tests.flamelet.conftest import (
    ROLE,
    START,
    STOP,
    Plane,
    State,
    alive,
    bundle,
    eventually,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

REPORTING_ROLE = """
import json, os, sys
config = json.load(open(sys.argv[1]))
print("taskid", config["taskid"])
print("key visible", "FLAME_TASK_KEY" in os.environ)
print("socket", os.environ.get("FLAME_DATAPLANE_SOCKET", "none"))
print("python", sys.executable)
print("to stderr", file=sys.stderr)
"""

# Prints its pid and its grandchild's, then waits to be stopped.
LINGERING_ROLE = """
import os, subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "1000"])
print("pids", os.getpid(), grandchild.pid)
time.sleep(1000)
"""


async def run_started(plane: Plane, tmp_path: Path, **settings: Any) -> int:
    await plane.publish(START)
    return await plane.run_agent(plane.settings(tmp_path, **settings))


def logs(plane: Plane) -> str:
    return plane.service.logs.decode()


async def test_start_runs_the_role_and_reports_running_then_completed(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role(REPORTING_ROLE)

    assert await run_started(plane, tmp_path) == EXIT_OK

    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_COMPLETED]
    final = plane.service.final()
    assert (final.exit_code, final.reason) == (0, "")
    assert f"taskid {plane.task_id}\n" in logs(plane)
    assert "key visible False\n" in logs(plane)
    assert "to stderr\n" in logs(plane)
    assert final.log_tail == logs(plane)
    assert set(plane.service.seen_keys) == {"the-task-key"}
    folder = tmp_path / plane.job_id / plane.task_id
    assert folder.stat().st_mode & 0o777 == 0o700
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        plane.service.manifest.config_json
    )
    assert (folder / "task.log").read_text() == logs(plane)
    assert not (folder / ".code.zip").exists()


async def test_a_role_exiting_3_is_failed_with_its_exit_code(plane: Plane, tmp_path: Path) -> None:
    plane.service.serve_role("import sys\nprint('bad input')\nsys.exit(3)\n")

    assert await run_started(plane, tmp_path) == EXIT_OK

    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_FAILED]
    final = plane.service.final()
    assert (final.exit_code, final.reason) == (3, "role code exited with status 3")
    assert final.log_tail == "bad input\n"


async def test_a_role_killed_by_a_signal_is_failed_with_the_signal_name(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")

    await run_started(plane, tmp_path)

    final = plane.service.final()
    assert (final.state, final.exit_code) == (State.STATE_FAILED, 128 + 9)
    assert final.reason == "role code killed by signal SIGKILL"


async def test_a_digest_mismatch_fails_the_task_without_running_it(
    plane: Plane, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    plane.service.serve_role(f"open({str(marker)!r}, 'w').close()\n")
    plane.service.manifest.code_sha256 = "0" * 64

    assert await run_started(plane, tmp_path) == EXIT_OK

    assert plane.service.states() == [State.STATE_FAILED]
    assert plane.service.final().reason.startswith("code bundle digest mismatch")
    assert not marker.exists()


async def test_a_bundle_longer_than_the_manifest_says_is_refused(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('hi')\n")
    plane.service.manifest.code_size_bytes -= 1

    await run_started(plane, tmp_path)

    assert plane.service.states() == [State.STATE_FAILED]
    assert "code bundle size mismatch" in plane.service.final().reason


async def test_a_bundle_escaping_its_folder_fails_the_task(plane: Plane, tmp_path: Path) -> None:
    evil = bundle({f"{ROLE}/main.py": "print('hi')\n", f"{ROLE}/../../escaped.txt": "gotcha"})
    plane.service.serve_role("", code=evil)

    assert await run_started(plane, tmp_path / "root") == EXIT_OK

    assert plane.service.states() == [State.STATE_FAILED]
    assert "leaves the work folder" in plane.service.final().reason
    assert not list(tmp_path.rglob("escaped.txt"))


async def test_stop_terminates_the_role_and_its_children(plane: Plane, tmp_path: Path) -> None:
    plane.service.serve_role(LINGERING_ROLE)
    await plane.publish(START)
    agent = asyncio.create_task(plane.run_agent(plane.settings(tmp_path)))
    await eventually(lambda: "pids" in logs(plane))
    pids = [int(pid) for pid in re.findall(r"pids (\d+) (\d+)", logs(plane))[0]]
    assert all(alive(pid) for pid in pids)

    await plane.publish(STOP)

    assert await agent == EXIT_OK
    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_TERMINATED]
    assert plane.service.final().reason == "stopped by the control plane"
    await eventually(lambda: not any(alive(pid) for pid in pids), timeout=2)


async def test_max_run_time_terminates_a_role_that_ignores_sigterm(
    plane: Plane, tmp_path: Path
) -> None:
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    )
    plane.service.serve_role(stubborn, max_run_time=1)
    began = asyncio.get_running_loop().time()

    assert await run_started(plane, tmp_path, stop_grace_seconds=0.5) == EXIT_OK

    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_TERMINATED]
    assert plane.service.final().reason == "exceeded maxRunTime of 1 s"
    assert asyncio.get_running_loop().time() - began < 5


async def test_a_wrong_task_key_ends_the_agent_with_a_failure(plane: Plane, tmp_path: Path) -> None:
    plane.service.serve_role("print('hi')\n")
    await plane.publish(START)

    exit_code = await plane.run_agent(plane.settings(tmp_path), key="not-the-key")

    assert exit_code == EXIT_AGENT_FAILED
    assert plane.service.statuses == []


async def test_events_of_other_jobs_and_repeated_starts_are_ignored(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('ran')\n")
    await plane.publish(STOP, job_id="another-job")
    await plane.publish(START, job_id="another-job")
    await plane.publish(START)
    await plane.publish(START)

    assert await plane.run_agent(plane.settings(tmp_path)) == EXIT_OK

    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_COMPLETED]
    assert logs(plane) == "ran\n"


async def test_stop_before_start_reports_terminated_and_runs_nothing(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('ran')\n")
    await plane.publish(STOP)
    await plane.publish(START)

    assert await plane.run_agent(plane.settings(tmp_path)) == EXIT_OK

    assert plane.service.states() == [State.STATE_TERMINATED]
    assert plane.service.logs == b""


async def test_logs_survive_failed_appends_and_are_complete_before_the_final_state(
    plane: Plane, tmp_path: Path
) -> None:
    chatty = "for i in range(3000):\n    print(f'line {i:05d} ' + 'x' * 40)\n"
    plane.service.serve_role(chatty)
    plane.service.failing_appends = 2

    await run_started(plane, tmp_path)

    expected = "".join(f"line {i:05d} {'x' * 40}\n" for i in range(3000))
    assert logs(plane) == expected
    assert plane.service.final().log_tail == expected[-4096:]


@dataclass
class FakeDataPlane:
    socket_path: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    async def start(self, manifest: agent_pb2.TaskManifest, **kwargs: Any) -> FakeDataPlane:
        self.calls.append({"manifest": manifest, **kwargs})
        return self

    async def stop(self) -> None:
        self.stopped = True


async def test_the_data_plane_is_started_for_the_role_and_stopped_after_it(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role(REPORTING_ROLE)
    dataplane = FakeDataPlane(socket_path=str(tmp_path / "dp.sock"))
    await plane.publish(START)

    await plane.run_agent(plane.settings(tmp_path), start_dataplane=dataplane.start)

    assert f"socket {dataplane.socket_path}\n" in logs(plane)
    [call] = dataplane.calls
    assert call["manifest"] == plane.service.manifest
    assert call["work_dir"] == tmp_path / plane.job_id / plane.task_id
    assert (call["task_key"], call["apiserver"], call["tls"]) == (
        "the-task-key",
        plane.apiserver.address,
        None,
    )
    assert dataplane.stopped


async def test_a_data_plane_that_fails_to_start_fails_the_task(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('ran')\n")

    def broken(manifest: agent_pb2.TaskManifest, **kwargs: Any) -> Any:
        raise RuntimeError("no broker")

    await plane.publish(START)
    await plane.run_agent(plane.settings(tmp_path), start_dataplane=broken)

    assert plane.service.states() == [State.STATE_FAILED]
    assert "the data plane did not start" in plane.service.final().reason


async def test_dependencies_are_installed_into_the_job_venv(plane: Plane, tmp_path: Path) -> None:
    # pip itself is in every fresh venv: satisfied without reaching an index.
    plane.service.serve_role(REPORTING_ROLE, dependencies=["pip"])

    await run_started(plane, tmp_path, install_dependencies=True)

    assert plane.service.final().state == State.STATE_COMPLETED
    venv_python = tmp_path / plane.job_id / "venv" / "bin" / "python"
    assert f"python {venv_python}\n" in logs(plane)


async def test_a_failed_installation_fails_the_task_with_pip_output(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('ran')\n", dependencies=["not a requirement!"])

    await run_started(plane, tmp_path, install_dependencies=True)

    assert plane.service.states() == [State.STATE_FAILED]
    assert "installing dependencies failed" in plane.service.final().reason
    assert "not a requirement!" in plane.service.final().reason
