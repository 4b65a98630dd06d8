"""The lifecycle of one task, driven by its notifier events.

::

    idle ──START_JOB──▶ preparing ──▶ running ──child exits──▶ COMPLETED / FAILED
      │                    │             │
      │                    │             ├──STOP_JOB, signal, maxRunTime──▶ TERMINATED
      │                    └──STOP_JOB, signal──▶ TERMINATED (nothing ran)
      └──STOP_JOB──▶ TERMINATED (nothing ran)      └──prepare fails──▶ FAILED

Preparing fetches the manifest and code, fills the work folder, and starts the
data plane; RUNNING is reported before the role code is spawned. Whatever the
end, the agent reports one final state and its run ends: the process exits 0
when that report was delivered, 1 when it could not be (the deployer then
reports the agent dead). A task runs at most once per agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from flame.agent.v1 import agent_pb2
from flame.flamelet import seam
from flame.flamelet.api import Download, Status, is_key_rejected
from flame.flamelet.child import Child, ExitStatus, OnLine
from flame.flamelet.deps import dependencies, prepare_venv
from flame.flamelet.logship import LogShipper, TaskLog
from flame.flamelet.workdir import (
    CONFIG_FILE,
    PrepareError,
    WorkArea,
    check_bundle,
    check_name,
    extract_bundle,
    write_config,
)
from flame.job.v1 import task_pb2
from flame.notifier.client import follow_events
from flame.notify.v1 import event_pb2, notify_service_pb2_grpc
from flame.rpc.tls import ClientTls

__all__ = [
    "DATAPLANE_SOCKET_ENV",
    "EXIT_AGENT_FAILED",
    "EXIT_OK",
    "TASK_KEY_ENV",
    "AgentSettings",
    "TaskAgent",
    "TaskApi",
]

_log = logging.getLogger(__name__)

State = task_pb2.Task.State
Event = event_pb2.Event

EXIT_OK = 0
EXIT_AGENT_FAILED = 1

TASK_KEY_ENV = "FLAME_TASK_KEY"
DATAPLANE_SOCKET_ENV = "FLAME_DATAPLANE_SOCKET"

LOG_FILE = "task.log"
_BUNDLE_FILE = ".code.zip"
_DATAPLANE_START_SECONDS = 60.0
_DATAPLANE_STOP_SECONDS = 10.0
_LOG_FLUSH_SECONDS = 10.0
_FOLLOWER_STOP_SECONDS = 5.0


class TaskApi(Protocol):
    """The AgentService calls of one task (`flame.flamelet.api.AgentApi`)."""

    async def get_manifest(self) -> agent_pb2.TaskManifest:
        """Fetch the task's manifest."""
        ...

    async def download_code(self, dest: Path, *, max_bytes: int) -> Download:
        """Download the code bundle into `dest`, stopping past `max_bytes`."""
        ...

    async def report(self, status: Status) -> None:
        """Report the task's state."""
        ...

    async def append_logs(self, chunks: Sequence[bytes]) -> None:
        """Append chunks to the task's log in one call."""
        ...


@dataclass(frozen=True)
class AgentSettings:
    """What an agent runs and how.

    Attributes:
        job_id: The job's id.
        task_id: The task's id.
        task_key: The task's key, handed to the data plane; never to the role code.
        apiserver: `host:port` of the apiserver, handed to the data plane.
        tls: TLS to the apiserver, handed to the data plane; None for plaintext.
        area: Where the task's files go.
        python: The interpreter that runs the role code.
        stop_grace_seconds: Time between SIGTERM and SIGKILL when stopping the role.
        install_dependencies: Install the config's `dependencies` into a venv.
        install_timeout_seconds: Deadline of that installation.
        log_tail_bytes: How much of the log's end goes with the final state.
    """

    job_id: str
    task_id: str
    task_key: str = field(repr=False)
    apiserver: str
    tls: ClientTls | None
    area: WorkArea
    python: str = sys.executable
    stop_grace_seconds: float = 10.0
    install_dependencies: bool = False
    install_timeout_seconds: float = 600.0
    log_tail_bytes: int = 4096


@dataclass(frozen=True)
class _Prepared:
    """A task ready to spawn."""

    argv: list[str]
    folder: Path
    env: dict[str, str]
    max_run_time_seconds: int


class _KeyRejected(Exception):
    """The apiserver refused the task key: nothing can be reported."""


class TaskAgent:
    """Runs one task from its START_JOB event to its final state."""

    def __init__(
        self,
        settings: AgentSettings,
        api: TaskApi,
        *,
        start_dataplane: seam.StartDataPlane | None,
    ) -> None:
        """Run the task `settings` name, calling the apiserver through `api`.

        Args:
            settings: The task and how to run it.
            api: The task's AgentService calls.
            start_dataplane: The data plane's entry point (`flame.flamelet.seam`);
                None runs the role code without one.
        """
        self._settings = settings
        self._api = api
        self._start_dataplane = start_dataplane
        self._lifecycle: asyncio.Task[None] | None = None
        self._stop_reason = ""
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._exit_code = EXIT_OK
        self._dataplane: seam.DataPlaneHandle | None = None

    async def run(self, notify: notify_service_pb2_grpc.NotifyServiceAsyncStub) -> int:
        """Follow the task's events until the task ends; return the process exit status."""
        following = asyncio.Event()
        follower = asyncio.create_task(
            follow_events(
                notify,
                f"task/{self._settings.task_id}",
                handle=self.handle_event,
                stop=following,
            )
        )
        try:
            await self._done.wait()
        finally:
            following.set()
            await _bounded(follower, _FOLLOWER_STOP_SECONDS)
            if self._lifecycle is not None and not self._lifecycle.done():
                # Only when run() itself is cancelled: the role code goes with it.
                self._lifecycle.cancel()
                await _bounded(self._lifecycle, _FOLLOWER_STOP_SECONDS)
        return self._exit_code

    async def handle_event(self, event: Event) -> None:
        """Act on one notifier event; returns at once, so the event is acknowledged."""
        if event.job_id != self._settings.job_id:
            _log.info("event of another job ignored", extra={"event_job": event.job_id})
        elif event.type == Event.TYPE_START_JOB:
            self._start()
        elif event.type == Event.TYPE_STOP_JOB:
            self.stop("stopped by the control plane")
        else:
            _log.info("event ignored", extra={"type": Event.Type.Name(event.type)})

    def stop(self, reason: str, *, report_if_idle: bool = True) -> None:
        """Stop the task, reporting TERMINATED with `reason`.

        Args:
            reason: Why, as the control plane will show it.
            report_if_idle: Before START_JOB, report TERMINATED (the task must not
                run any more) rather than just end.
        """
        if self._lifecycle is None:
            _log.info("stopped before the task started", extra={"reason": reason})
            if report_if_idle:
                self._lifecycle = asyncio.create_task(
                    self._conclude(Status(State.STATE_TERMINATED, reason=reason))
                )
            else:
                self._done.set()
            return
        if not self._stop_requested.is_set():
            _log.info("stopping the task", extra={"reason": reason})
            self._stop_reason = reason
            self._stop_requested.set()

    def _start(self) -> None:
        if self._lifecycle is not None or self._done.is_set():
            _log.info("START_JOB ignored: the task already started or ended in this agent")
            return
        _log.info("starting the task")
        self._lifecycle = asyncio.create_task(self._live())

    async def _live(self) -> None:
        try:
            await self._live_through()
        finally:
            if not self._done.is_set():  # cancelled: run() must not wait for ever
                self._finish(EXIT_AGENT_FAILED)

    async def _live_through(self) -> None:
        try:
            status = await self._attempt()
        except _KeyRejected as error:
            _log.error(
                "the apiserver rejected the task key; giving up", extra={"error": str(error)}
            )
            await self._stop_dataplane()
            self._finish(EXIT_AGENT_FAILED)
            return
        except Exception:
            _log.exception("the agent failed")
            status = Status(State.STATE_FAILED, reason="the task agent failed unexpectedly")
        await self._conclude(status)

    async def _conclude(self, status: Status) -> None:
        """Report the final state, then release the data plane and end the run."""
        delivered = await self._report_final(status)
        await self._stop_dataplane()
        self._finish(EXIT_OK if delivered else EXIT_AGENT_FAILED)

    def _finish(self, exit_code: int) -> None:
        self._exit_code = exit_code
        self._done.set()

    async def _attempt(self) -> Status:
        prepare = asyncio.create_task(self._prepare())
        if not await self._unless_stopped(prepare):
            return Status(State.STATE_TERMINATED, reason=self._stop_reason)
        try:
            prepared = prepare.result()
        except PrepareError as error:
            return Status(State.STATE_FAILED, reason=str(error))
        except grpc.aio.AioRpcError as error:
            return _fetch_failed(error)
        return await self._run(prepared)

    async def _unless_stopped(self, work: asyncio.Task[Any]) -> bool:
        """Wait for `work`; if a stop comes first, cancel it and return False."""
        stopped = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if work.done():
            return True
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return False

    async def _prepare(self) -> _Prepared:
        manifest = await self._api.get_manifest()
        try:
            role = check_name(manifest.role, "role")
            folder = self._settings.area.create()
            write_config(folder, manifest)
        except (ValueError, OSError) as error:
            raise PrepareError(f"could not prepare the work folder: {error}") from error
        main = await self._fetch_code(manifest, folder, role)
        python = await self._python(manifest)
        socket = await self._open_dataplane(manifest, folder)
        argv = [python, str(main.relative_to(folder)), CONFIG_FILE]
        return _Prepared(argv, folder, _role_env(socket), manifest.max_run_time_seconds)

    async def _fetch_code(self, manifest: agent_pb2.TaskManifest, folder: Path, role: str) -> Path:
        bundle = folder / _BUNDLE_FILE
        try:
            download = await self._api.download_code(bundle, max_bytes=manifest.code_size_bytes)
            check_bundle(download, manifest)
            return await asyncio.to_thread(extract_bundle, bundle, folder, role)
        except OSError as error:
            raise PrepareError(f"could not unpack the code bundle: {error}") from error
        finally:
            bundle.unlink(missing_ok=True)

    async def _python(self, manifest: agent_pb2.TaskManifest) -> str:
        if not self._settings.install_dependencies:
            return self._settings.python
        requirements = dependencies(manifest.config_json)
        if not requirements:
            return self._settings.python
        _log.info("installing dependencies", extra={"requirements": requirements})
        return await prepare_venv(
            self._settings.area,
            requirements,
            base_python=self._settings.python,
            env=_inherited_env(),
            timeout=self._settings.install_timeout_seconds,
        )

    async def _open_dataplane(self, manifest: agent_pb2.TaskManifest, folder: Path) -> str | None:
        """Start the task's data plane; return its socket, or None when there is none."""
        if self._start_dataplane is None:
            _log.warning(
                "no data plane installed: the role code runs without one",
                extra={"dataplane_module": seam.DATAPLANE_MODULE},
            )
            return None
        settings = self._settings
        try:
            async with asyncio.timeout(_DATAPLANE_START_SECONDS):
                self._dataplane = await seam.start(
                    self._start_dataplane,
                    manifest,
                    work_dir=folder,
                    task_key=settings.task_key,
                    apiserver=settings.apiserver,
                    tls=settings.tls,
                )
        except Exception as error:
            raise PrepareError(f"the data plane did not start: {error!r}") from error
        return self._dataplane.socket_path

    async def _run(self, prepared: _Prepared) -> Status:
        log = TaskLog(prepared.folder / LOG_FILE)
        shipper = LogShipper(log, self._api.append_logs)
        shipper.start()

        def on_line(line: bytes) -> None:
            log.append(line)
            shipper.notify()

        try:
            status = await self._spawn_and_supervise(prepared, on_line)
        finally:
            # The whole log is shipped before the final state says the task is over.
            await shipper.close(_LOG_FLUSH_SECONDS)
            log.close()
        return dataclasses.replace(status, log_tail=log.tail(self._settings.log_tail_bytes))

    async def _spawn_and_supervise(self, prepared: _Prepared, on_line: OnLine) -> Status:
        try:
            await self._api.report(Status(State.STATE_RUNNING))
        except grpc.aio.AioRpcError as error:
            if is_key_rejected(error):
                raise _KeyRejected(error.details()) from error
            return Status(State.STATE_FAILED, reason=f"could not report RUNNING: {_rpc(error)}")
        if self._stop_requested.is_set():
            return Status(State.STATE_TERMINATED, reason=self._stop_reason)
        try:
            child = await Child.spawn(
                prepared.argv, cwd=prepared.folder, env=prepared.env, on_line=on_line
            )
        except OSError as error:
            return Status(State.STATE_FAILED, reason=f"could not start the role code: {error}")
        _log.info("role code started", extra={"pid": child.pid, "argv": prepared.argv})
        return await self._supervise(child, prepared.max_run_time_seconds)

    async def _supervise(self, child: Child, max_run_time: int) -> Status:
        exited = asyncio.create_task(child.wait())
        stopped = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait(
                {exited, stopped},
                timeout=max_run_time or None,  # 0: no limit
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited.done():
                return _exit_status(exited.result())
            reason = self._stop_reason or f"exceeded maxRunTime of {max_run_time} s"
            _log.info("stopping the role code", extra={"reason": reason})
            await child.stop(self._settings.stop_grace_seconds)
            return Status(State.STATE_TERMINATED, reason=reason)
        except BaseException:
            child.kill()  # never leave the role running behind a cancelled agent
            raise
        finally:
            stopped.cancel()
            exited.cancel()

    async def _report_final(self, status: Status) -> bool:
        state = State.Name(status.state)
        try:
            await self._api.report(status)
        except grpc.aio.AioRpcError as error:
            _log.error(
                "could not report the final state", extra={"state": state, "error": _rpc(error)}
            )
            return False
        _log.info("final state reported", extra={"state": state, "reason": status.reason})
        return True

    async def _stop_dataplane(self) -> None:
        if self._dataplane is None:
            return
        try:
            await asyncio.wait_for(self._dataplane.stop(), _DATAPLANE_STOP_SECONDS)
        except Exception:
            _log.exception("the data plane did not stop cleanly")


def _exit_status(status: ExitStatus) -> Status:
    if status.returncode == 0:
        return Status(State.STATE_COMPLETED, exit_code=0)
    return Status(State.STATE_FAILED, exit_code=status.exit_code, reason=status.describe())


def _fetch_failed(error: grpc.aio.AioRpcError) -> Status:
    if is_key_rejected(error):
        raise _KeyRejected(error.details()) from error
    return Status(State.STATE_FAILED, reason=f"could not fetch the task: {_rpc(error)}")


def _rpc(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"


def _role_env(dataplane_socket: str | None) -> dict[str, str]:
    # Unbuffered, so the role's output arrives line by line, not at exit.
    env = {**_inherited_env(), "PYTHONUNBUFFERED": "1"}
    if dataplane_socket is not None:
        env[DATAPLANE_SOCKET_ENV] = dataplane_socket
    return env


def _inherited_env() -> dict[str, str]:
    """This process's environment without the task key: the role code must never hold it."""
    return {name: value for name, value in os.environ.items() if name != TASK_KEY_ENV}


async def _bounded(task: asyncio.Task[Any], timeout: float) -> None:
    """Wait up to `timeout` seconds for `task` to end, then cancel it if it has not."""
    await asyncio.wait({task}, timeout=timeout)
    task.cancel()
