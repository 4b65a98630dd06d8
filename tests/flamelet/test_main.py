"""The `flamelet` binary as a deployer runs it, against a fake AgentService and a real notifier."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.flamelet.conftest import KEY, START, Plane, State, alive, eventually
from tests.flamelet.test_agent import LINGERING_ROLE
from tests.support.processes import BIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def start_flamelet(
    plane: Plane, work_root: Path, *extra: str, key: str = KEY
) -> asyncio.subprocess.Process:
    args = [
        *("--job-id", plane.job_id, "--task-id", plane.task_id),
        *("--apiserver", plane.apiserver.address, "--notifier", plane.notifier.address),
        *("--plaintext", "--work-root", str(work_root), "--stop-grace-seconds", "2"),
        *extra,
    ]
    return await asyncio.create_subprocess_exec(
        str(BIN / "flamelet"),
        *args,
        env={**os.environ, "FLAME_TASK_KEY": key},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> str:
    """Wait for the flamelet to exit; return its log."""
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    return stderr.decode()


async def test_the_binary_runs_a_task_and_removes_its_work_folder(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('hello from the role')\n")
    process = await start_flamelet(plane, tmp_path)
    await plane.publish(START)

    log = await finish(process)

    assert process.returncode == 0, log
    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_COMPLETED]
    assert plane.service.logs == b"hello from the role\n"
    assert list(tmp_path.iterdir()) == []


async def test_the_binary_exits_non_zero_when_its_task_key_is_refused(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role("print('never')\n")
    process = await start_flamelet(plane, tmp_path, key="stolen-key")
    await plane.publish(START)

    log = await finish(process)

    assert process.returncode == 1
    assert "the apiserver rejected the task key" in log
    assert "the task key is not valid" in log
    assert plane.service.statuses == []


async def test_sigterm_stops_the_role_reports_terminated_and_keeps_the_folder_if_asked(
    plane: Plane, tmp_path: Path
) -> None:
    plane.service.serve_role(LINGERING_ROLE)
    process = await start_flamelet(plane, tmp_path, "--keep-work-dir")
    await plane.publish(START)
    await eventually(lambda: b"pids" in plane.service.logs, timeout=15)
    pids = [int(pid) for pid in re.findall(r"pids (\d+) (\d+)", plane.service.logs.decode())[0]]

    process.send_signal(signal.SIGTERM)
    log = await finish(process)

    assert process.returncode == 0, log
    assert plane.service.states() == [State.STATE_RUNNING, State.STATE_TERMINATED]
    assert plane.service.final().reason == "the task agent received SIGTERM"
    assert not any(alive(pid) for pid in pids)
    assert (tmp_path / plane.job_id / plane.task_id / "task.log").read_bytes() == plane.service.logs


def test_the_binary_refuses_to_start_without_a_task_key() -> None:
    env = {name: value for name, value in os.environ.items() if name != "FLAME_TASK_KEY"}
    args = ["--job-id", "j", "--task-id", "t", "--apiserver", "h:1", "--notifier", "h:2"]
    result = subprocess.run(
        [str(BIN / "flamelet"), *args, "--plaintext"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "FLAME_TASK_KEY" in result.stderr
