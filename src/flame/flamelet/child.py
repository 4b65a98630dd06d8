"""The role code as a child process, in its own process group, its output read line by line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Child", "ExitStatus", "OnLine"]

_log = logging.getLogger(__name__)

# Longest piece of output handed on at once: a longer line arrives in pieces.
_LINE_LIMIT = 64 * 1024
# After the group is gone its output ends at once, unless a process that left the
# group (setsid) still holds the pipe: it is not waited for longer than this.
_DRAIN_SECONDS = 5.0

OnLine = Callable[[bytes], None]


@dataclass(frozen=True)
class ExitStatus:
    """How the role code ended: `returncode` as asyncio reports it (-N for signal N)."""

    returncode: int

    @property
    def exit_code(self) -> int:
        """The exit status, or 128 + N when killed by signal N, as shells report it."""
        return self.returncode if self.returncode >= 0 else 128 - self.returncode

    def describe(self) -> str:
        """A human-readable account, for a FAILED reason."""
        if self.returncode >= 0:
            return f"role code exited with status {self.returncode}"
        number = -self.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"role code killed by signal {name}"


class Child:
    """A running role process, leader of its own process group."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        output: asyncio.ReadTransport,
        pump: asyncio.Task[None],
    ) -> None:
        """Wrap a started `process` whose `output` `pump` reads; use `spawn`."""
        self._process = process
        self._output = output
        self._pump = pump

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], on_line: OnLine
    ) -> Child:
        """Start `argv` in a new session; each line of its stdout and stderr goes to `on_line`.

        Raises:
            OSError: The program could not be started.
        """
        # A pipe of our own, not asyncio's PIPE: asyncio's Process.wait() returns only
        # once its pipes close, which a process the child left behind can delay for ever.
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *_dying_with_parent(argv),
                cwd=cwd,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                # One pipe keeps stdout and stderr lines in the order they were written.
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child's copy is the only one left: EOF when it goes
        reader = asyncio.StreamReader(limit=_LINE_LIMIT)
        output, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
        )
        return cls(process, output, asyncio.create_task(_pump(reader, on_line)))

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return self._process.pid

    async def wait(self) -> ExitStatus:
        """Wait for the child to exit, kill what it left in its group, read its last output."""
        returncode = await self._process.wait()
        # Leftovers would outlive the task and keep the output pipe open.
        self._signal_group(signal.SIGKILL)
        await self._drain()
        return ExitStatus(returncode)

    async def stop(self, grace: float) -> ExitStatus:
        """SIGTERM the whole group; SIGKILL it once the child exits, or after `grace` seconds.

        The child answers for its own children: what it leaves behind when it
        exits is killed, as after a normal exit.
        """
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), grace)
        self._signal_group(signal.SIGKILL)
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the whole group at once, without waiting."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        # The group outlives its leader while any member is alive, so its id is not reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)

    async def _drain(self) -> None:
        # asyncio.wait, not wait_for: safe for two callers at once (wait() and stop()).
        done, _ = await asyncio.wait({self._pump}, timeout=_DRAIN_SECONDS)
        if not done:
            _log.warning("role output still open after the role exited; no longer read")
            self._pump.cancel()
            self._output.close()


async def _pump(stream: asyncio.StreamReader, on_line: OnLine) -> None:
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:  # end of output
            if end.partial:
                on_line(end.partial)
            return
        except asyncio.LimitOverrunError as long:
            line = await stream.readexactly(long.consumed)
        on_line(line)


_SETPRIV = shutil.which("setpriv")


def _dying_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` run so that it gets SIGKILL when the flamelet dies (util-linux's
    setpriv sets the parent-death signal, which survives exec): a killed agent
    must not leave its role code running unsupervised."""
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
