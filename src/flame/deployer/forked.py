"""Starting flamelets by forking a preloaded server instead of executing them.

A flamelet spends most of its start-up importing (gRPC, protobuf, the data
plane, NumPy): ~0.35 s of CPU each, which for a job of a hundred tasks on a
small machine is most of the time to get them running. The deployer therefore
keeps one `multiprocessing` fork server that has imported the flamelet once;
each flamelet is a fork of it (copy-on-write, a few milliseconds) that then runs
the flamelet's command line as if it had been executed. The fork server holds no
threads, channels or loops, so forking it is safe.

Only the standard flamelet is started this way; another `--flamelet` program is
executed as usual.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

__all__ = ["ForkedProcess", "fork_flamelet"]

_PRELOAD = ["flame.flamelet.main", "flame.flamelet.dataplane"]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(_PRELOAD)


def _run_flamelet(argv: Sequence[str], env: Mapping[str, str], log_file: str, cwd: str) -> None:
    """In the fork: lead a new session, write to the log, take the agent's
    environment and working folder, and run the flamelet's command line."""
    os.setsid()
    os.chdir(cwd)
    descriptor = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for stream in (1, 2):
        os.dup2(descriptor, stream)
    os.close(descriptor)
    os.environ.clear()
    os.environ.update(env)
    from flame.flamelet.main import main  # preloaded: already imported in the fork server

    sys.argv = ["flamelet", *argv]
    main()


class ForkedProcess:
    """A forked flamelet, with the `Popen` methods the launcher uses."""

    def __init__(self, process: BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        """None while it runs, else its exit status (negative: killed by that signal)."""
        if self._process.is_alive():
            return None
        return self._process.exitcode


def fork_flamelet(
    argv: Sequence[str], env: Mapping[str, str], log_file: Path, cwd: Path
) -> ForkedProcess:
    """Start a flamelet with the arguments `argv` (without the program) as a fork."""
    process = _context.Process(
        target=_run_flamelet, args=(list(argv), dict(env), str(log_file), str(cwd)), daemon=False
    )
    process.start()
    return ForkedProcess(process)
