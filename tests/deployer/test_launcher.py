"""The local launcher on real processes: argv, environment, log file, stop, exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from flame.compute.v1 import compute_pb2
from flame.deployer.deployer import AgentError
from flame.deployer.launcher import (
    STATUS_UNKNOWN,
    FlameletSettings,
    LocalAgent,
    LocalLauncher,
    describe_exit,
)
from tests.deployer.conftest import FakeFlamelet, MakeFlamelet, alive, eventually

pytestmark = pytest.mark.timeout(20)

JOB = "0123456789abcdef01234567"
TASK = "a" * 40
KEY = "task-key-" + "k" * 24


def launcher_for(
    flamelet: FakeFlamelet, tmp_path: Path, *, grace: float = 5.0, **settings: object
) -> LocalLauncher:
    options = FlameletSettings(
        executable=flamelet.path,
        apiserver="127.0.0.1:1",
        notifier="127.0.0.1:2",
        work_root=tmp_path / "work",
        **settings,  # type: ignore[arg-type]
    )
    return LocalLauncher(options, grace_seconds=grace)


def credential(task_id: str = TASK) -> compute_pb2.TaskCredential:
    return compute_pb2.TaskCredential(task_id=task_id, task_key=KEY)


async def test_a_flamelet_gets_its_task_in_argv_and_its_key_only_in_the_environment(
    fake_flamelet: MakeFlamelet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAME_DEPLOYER_COMPUTE_KEY", "must-not-leak-to-agents")
    flamelet = fake_flamelet("sleep")
    launcher = launcher_for(flamelet, tmp_path, ca_file=tmp_path / "ca.pem")
    agent = launcher.launch(JOB, credential())
    record = (await flamelet.wait_for_records(1))[TASK]
    assert record["argv"][1:] == [
        *("--job-id", JOB, "--task-id", TASK),
        *("--apiserver", "127.0.0.1:1", "--notifier", "127.0.0.1:2"),
        *("--ca-file", str(tmp_path / "ca.pem"), "--work-root", str(tmp_path / "work")),
    ]
    assert record["task_key"] == KEY
    assert not any(KEY in arg for arg in record["argv"])
    assert record["deployer_env"] == []
    assert record["pgid"] == record["pid"] == agent.pid  # leads its own group
    log = launcher.log_file(JOB, TASK)
    assert log == tmp_path / "work" / "logs" / JOB / f"{TASK}.log"
    await eventually(lambda: "fake flamelet" in log.read_text(), what="the flamelet's output")
    await agent.stop()


async def test_plaintext_is_passed_on(fake_flamelet: MakeFlamelet, tmp_path: Path) -> None:
    flamelet = fake_flamelet("exit0")
    launcher_for(flamelet, tmp_path, plaintext=True).launch(JOB, credential())
    argv = (await flamelet.wait_for_records(1))[TASK]["argv"]
    assert "--plaintext" in argv
    assert "--ca-file" not in argv


@pytest.mark.parametrize("job_id, task_id", [("../escape", TASK), (JOB, ""), (JOB, "a/b")])
def test_ids_unfit_for_file_names_are_refused(
    fake_flamelet: MakeFlamelet, tmp_path: Path, job_id: str, task_id: str
) -> None:
    launcher = launcher_for(fake_flamelet("exit0"), tmp_path)
    with pytest.raises(AgentError, match="not a valid id"):
        launcher.launch(job_id, credential(task_id))


def test_a_missing_program_is_an_agent_error(tmp_path: Path) -> None:
    settings = FlameletSettings(tmp_path / "nothing", "a:1", "n:2", tmp_path / "work")
    with pytest.raises(AgentError, match="cannot start"):
        LocalLauncher(settings).launch(JOB, credential())


async def test_stop_ends_the_flamelet_and_its_children(
    fake_flamelet: MakeFlamelet, tmp_path: Path
) -> None:
    flamelet = fake_flamelet("sleep")
    agent = launcher_for(flamelet, tmp_path).launch(JOB, credential())
    await flamelet.wait_for_records(1)
    pids = flamelet.pids()
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    await agent.stop()
    assert not any(alive(pid) for pid in pids)
    assert agent.reap() == "flamelet killed by signal SIGTERM"


async def test_stop_kills_a_group_that_ignores_sigterm_after_the_grace(
    fake_flamelet: MakeFlamelet, tmp_path: Path
) -> None:
    flamelet = fake_flamelet("stubborn")
    agent = launcher_for(flamelet, tmp_path, grace=0.5).launch(JOB, credential())
    await flamelet.wait_for_records(1)
    pids = flamelet.pids()
    await agent.stop()
    assert not any(alive(pid) for pid in pids)
    assert agent.reap() == "flamelet killed by signal SIGKILL"


async def test_reap_reports_the_exit_status(fake_flamelet: MakeFlamelet, tmp_path: Path) -> None:
    agent = launcher_for(fake_flamelet("exit5"), tmp_path).launch(JOB, credential())
    await eventually(lambda: agent.reap() is not None, what="the flamelet to exit")
    assert agent.reap() == "flamelet exited with status 5"
    assert not alive(agent.pid)  # reaped, not a zombie


async def test_reap_kills_what_a_dead_flamelet_left_behind(
    fake_flamelet: MakeFlamelet, tmp_path: Path
) -> None:
    flamelet = fake_flamelet("sleep")
    agent: LocalAgent = launcher_for(flamelet, tmp_path).launch(JOB, credential())
    record = (await flamelet.wait_for_records(1))[TASK]
    assert agent.reap() is None
    os.kill(record["pid"], signal.SIGKILL)
    await eventually(lambda: agent.reap() is not None, what="the flamelet to be gone")
    await eventually(lambda: not alive(record["grandchild"]), what="its child to be killed")


async def test_a_later_launcher_adopts_a_running_flamelet_and_stops_it(
    fake_flamelet: MakeFlamelet, tmp_path: Path
) -> None:
    flamelet = fake_flamelet("sleep")
    launcher_for(flamelet, tmp_path).launch(JOB, credential())  # its deployer "dies"
    await flamelet.wait_for_records(1)
    pids = flamelet.pids()
    [adopted] = launcher_for(flamelet, tmp_path).adopt()
    assert (adopted.job_id, adopted.task_id, adopted.agent.pid) == (JOB, TASK, pids[0])
    assert adopted.agent.reap() is None
    await adopted.agent.stop()
    assert not any(alive(pid) for pid in pids)
    assert launcher_for(flamelet, tmp_path).adopt() == []  # stopped: forgotten


async def test_an_adopted_flamelet_that_ended_is_reaped_with_an_unknown_status(
    fake_flamelet: MakeFlamelet, tmp_path: Path
) -> None:
    flamelet = fake_flamelet("sleep")
    first = launcher_for(flamelet, tmp_path).launch(JOB, credential())
    record = (await flamelet.wait_for_records(1))[TASK]
    [adopted] = launcher_for(flamelet, tmp_path).adopt()
    os.kill(record["pid"], signal.SIGKILL)
    await eventually(lambda: adopted.agent.reap() is not None, what="the flamelet to be gone")
    assert adopted.agent.reap() == describe_exit(STATUS_UNKNOWN)
    assert "exit status is unknown" in describe_exit(STATUS_UNKNOWN)
    await eventually(lambda: not alive(record["grandchild"]), what="its child to be killed")
    assert first.reap() is not None  # the first launcher's child, no zombie left
    assert launcher_for(flamelet, tmp_path).adopt() == []


async def test_a_record_whose_pid_now_names_another_process_never_signals_it(
    fake_flamelet: MakeFlamelet, tmp_path: Path
) -> None:
    records = tmp_path / "work" / "agents"
    records.mkdir(parents=True)
    # A group leader that holds the recorded pid, started at another time: a pid reused.
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = {"job_id": JOB, "pid": stranger.pid, "started": 1}
        (records / f"{TASK}.json").write_text(json.dumps(record))
        (records / "torn.json").write_text('{"job_id": ')
        [adopted] = launcher_for(fake_flamelet("sleep"), tmp_path).adopt()
        assert adopted.agent.reap() == describe_exit(STATUS_UNKNOWN)
        await adopted.agent.stop()
        assert stranger.poll() is None  # neither reap nor stop signalled its group
        assert list(records.iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()
