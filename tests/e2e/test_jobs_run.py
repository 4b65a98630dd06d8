"""Jobs run end to end: flamectl up, the examples' resources with role code written
here, start, watch, tasks and logs; failures, stop, and components killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Flame, flamelets, prepare_example, role_zip, task_processes

pytestmark = pytest.mark.integration

QUICK = """
import json, sys
config = json.load(open(sys.argv[1]))
print(f"role {config['role']} task {config['taskid']} of job {config['job']['id']}", flush=True)
"""
SLOW = "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n"
FAILING = "import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n"
HIER_ROLES = ("trainer", "middle-aggregator", "top-aggregator")


def start(flame: Flame, job_file: Path) -> str:
    job_id = flame.run("create", "job", str(job_file)).stdout.strip()
    assert "starting" in flame.run("start", "job", job_id).stdout
    return job_id


def test_two_tier_job_runs_to_completed_with_tasks_and_logs(flame: Flame, tmp_path: Path) -> None:
    code = role_zip(tmp_path / "code.zip", {"trainer": QUICK, "aggregator": QUICK})
    job_id = start(flame, prepare_example(flame, "mnist", "mnist-e2e", code, tmp_path / "job"))
    watched = flame.run("watch", "job", job_id, timeout=180)
    assert "completed" in watched.stdout.splitlines()[-1]
    tasks = flame.json("get", "tasks", job_id)
    assert isinstance(tasks, list) and len(tasks) == 2
    assert {task["state"] for task in tasks} == {"STATE_COMPLETED"}
    for task in tasks:
        config = json.loads(task["configJson"])
        log = flame.run("logs", job_id, task["taskId"]).stdout
        assert f"role {config['role']} task {task['taskId']} of job {job_id}" in log
    assert "completed" in flame.run("get", "job", job_id).stdout


def test_hierarchical_job_runs_to_completed(flame: Flame, tmp_path: Path) -> None:
    code = role_zip(tmp_path / "code.zip", dict.fromkeys(HIER_ROLES, QUICK))
    job_id = start(flame, prepare_example(flame, "hier_mnist", "hier-e2e", code, tmp_path / "job"))
    assert "completed" in flame.run("watch", "job", job_id, timeout=180).stdout
    tasks = flame.json("get", "tasks", job_id)
    assert isinstance(tasks, list)
    assert sorted(task["role"] for task in tasks) == sorted(
        ["middle-aggregator"] * 2 + ["top-aggregator"] + ["trainer"] * 4
    )


def test_a_role_exiting_non_zero_fails_the_job_with_a_reason(flame: Flame, tmp_path: Path) -> None:
    code = role_zip(tmp_path / "code.zip", {"trainer": FAILING, "aggregator": SLOW})
    job_id = start(flame, prepare_example(flame, "mnist", "fail-e2e", code, tmp_path / "job"))
    watched = flame.run("watch", "job", job_id, check=False, timeout=180)
    assert watched.returncode == 1
    assert "failed" in watched.stderr and "exited with status 3" in watched.stderr
    job = flame.json("get", "job", job_id)
    assert isinstance(job, dict) and "role trainer" in job["reason"]
    _wait_until_no_task_processes(flame)


def test_stop_job_ends_every_child_process(flame: Flame, tmp_path: Path) -> None:
    code = role_zip(tmp_path / "code.zip", {"trainer": SLOW, "aggregator": SLOW})
    job_id = start(flame, prepare_example(flame, "mnist", "stop-e2e", code, tmp_path / "job"))
    flame.wait_for_state(job_id, "STATE_RUNNING")
    _wait_for_task_processes(flame, 4)  # two flamelets, two roles
    flame.run("stop", "job", job_id)
    assert flame.wait_for_state(job_id, "STATE_TERMINATED") == "STATE_TERMINATED"
    _wait_until_no_task_processes(flame)


def test_a_job_survives_the_controller_killed_mid_run(flame: Flame, tmp_path: Path) -> None:
    slow_then_done = "import time\ntime.sleep(6)\nprint('done', flush=True)\n"
    code = role_zip(
        tmp_path / "code.zip", {"trainer": slow_then_done, "aggregator": slow_then_done}
    )
    job_id = start(flame, prepare_example(flame, "mnist", "ctl-e2e", code, tmp_path / "job"))
    flame.wait_for_state(job_id, "STATE_RUNNING")
    os.kill(flame.component_pid("controller"), signal.SIGKILL)
    flame.up()  # restarts what died, on its old address
    assert flame.wait_for_state(job_id, "STATE_COMPLETED", "STATE_FAILED") == "STATE_COMPLETED"


def test_agents_still_get_stop_after_the_notifier_restarted(flame: Flame, tmp_path: Path) -> None:
    code = role_zip(tmp_path / "code.zip", {"trainer": SLOW, "aggregator": SLOW})
    job_id = start(flame, prepare_example(flame, "mnist", "ntf-e2e", code, tmp_path / "job"))
    flame.wait_for_state(job_id, "STATE_RUNNING")
    os.kill(flame.component_pid("notifier"), signal.SIGKILL)
    flame.up()
    flame.run("stop", "job", job_id)
    flame.wait_for_state(job_id, "STATE_TERMINATED")
    _wait_until_no_task_processes(flame)


def test_a_killed_flamelet_fails_its_task(flame: Flame, tmp_path: Path) -> None:
    code = role_zip(tmp_path / "code.zip", {"trainer": SLOW, "aggregator": SLOW})
    job_id = start(flame, prepare_example(flame, "mnist", "kill-e2e", code, tmp_path / "job"))
    flame.wait_for_state(job_id, "STATE_RUNNING")
    flamelets = _wait_for_task_processes(flame, 4, flamelets_only=True)
    os.kill(flamelets[0], signal.SIGKILL)
    flame.wait_for_state(job_id, "STATE_FAILED")
    job = flame.json("get", "job", job_id)
    assert isinstance(job, dict) and "killed by signal SIGKILL" in job["reason"]
    _wait_until_no_task_processes(flame)


def _wait_for_task_processes(
    flame: Flame, count: int, *, flamelets_only: bool = False
) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = task_processes(flame.home)
        if len(pids) >= count:
            return flamelets(flame.home) if flamelets_only else pids
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} task processes: {task_processes(flame.home)}")


def _wait_until_no_task_processes(flame: Flame) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not task_processes(flame.home):
            return
        time.sleep(0.2)
    raise AssertionError(f"task processes left: {task_processes(flame.home)}")
