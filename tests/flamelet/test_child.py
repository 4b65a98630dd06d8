"""The role process: its own group, output line by line, stopping and exit accounts."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from flame.flamelet.child import Child, ExitStatus
from tests.flamelet.conftest import alive

pytestmark = pytest.mark.timeout(20)


async def spawn(code: str, lines: list[bytes], tmp_path: Path) -> Child:
    return await Child.spawn(
        [sys.executable, "-u", "-c", code], cwd=tmp_path, env={}, on_line=lines.append
    )


async def test_output_arrives_line_by_line_and_a_long_line_in_pieces(tmp_path: Path) -> None:
    lines: list[bytes] = []
    code = (
        "import sys\nprint('a')\nsys.stderr.write('b\\n')\n"
        "print('x' * 200000)\nprint('end', end='')"
    )
    child = await spawn(code, lines, tmp_path)

    assert await child.wait() == ExitStatus(0)

    assert lines[:2] == [b"a\n", b"b\n"]
    assert b"".join(lines[2:]) == b"x" * 200000 + b"\nend"
    assert all(len(line) <= 200001 for line in lines)
    assert len(lines) > 3


async def test_what_the_role_leaves_behind_is_killed_when_it_exits(tmp_path: Path) -> None:
    lines: list[bytes] = []
    code = "import subprocess\nprint(subprocess.Popen(['sleep', '1000']).pid)"
    child = await spawn(code, lines, tmp_path)

    await asyncio.wait_for(child.wait(), 10)

    leftover = int(lines[0])
    await asyncio.sleep(0.1)
    assert not alive(leftover)


async def test_stop_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    lines: list[bytes] = []
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up')\ntime.sleep(60)"
    )
    child = await spawn(code, lines, tmp_path)
    while not lines:
        await asyncio.sleep(0.05)

    status = await asyncio.wait_for(child.stop(grace=0.3), 10)

    assert status == ExitStatus(-signal.SIGKILL)


def test_exit_accounts() -> None:
    assert ExitStatus(3).describe() == "role code exited with status 3"
    assert ExitStatus(-15).describe() == "role code killed by signal SIGTERM"
    assert (ExitStatus(3).exit_code, ExitStatus(-15).exit_code) == (3, 143)
