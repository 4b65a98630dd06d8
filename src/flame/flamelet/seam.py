"""The seam the data plane (`flame.flamelet.dataplane`) plugs into.

The agent calls, once per task, after the work folder is ready::

    handle = await start_dataplane(
        manifest, work_dir=..., task_key=..., apiserver="host:port", tls=ClientTls | None
    )

and hands `handle.socket_path` to the role code as `FLAME_DATAPLANE_SOCKET`.
After the role code ends and its status is reported, it awaits `handle.stop()`.
`start_dataplane` may be a coroutine function or a plain function.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from flame.agent.v1 import agent_pb2
from flame.rpc.tls import ClientTls

__all__ = ["DATAPLANE_MODULE", "DataPlaneHandle", "StartDataPlane", "load_dataplane", "start"]

DATAPLANE_MODULE = "flame.flamelet.dataplane"


class DataPlaneHandle(Protocol):
    """A task's running data plane."""

    @property
    def socket_path(self) -> str:
        """The Unix socket the role code reaches the data plane on."""
        ...

    async def stop(self) -> None:
        """Stop serving the role code and release the task's channels."""
        ...


StartDataPlane = Callable[..., "DataPlaneHandle | Awaitable[DataPlaneHandle]"]


def load_dataplane() -> StartDataPlane | None:
    """`start_dataplane` of the data-plane package, or None while there is none.

    Raises:
        ImportError: The package is there but fails to import: that must not
            pass unnoticed.
    """
    try:
        module = importlib.import_module(DATAPLANE_MODULE)
    except ModuleNotFoundError as error:
        if error.name != DATAPLANE_MODULE:
            raise
        return None
    starter: StartDataPlane | None = getattr(module, "start_dataplane", None)
    return starter


async def start(
    starter: StartDataPlane,
    manifest: agent_pb2.TaskManifest,
    *,
    work_dir: Path,
    task_key: str,
    apiserver: str,
    tls: ClientTls | None,
) -> DataPlaneHandle:
    """Call `starter` with the seam's arguments, awaiting it if it is a coroutine."""
    started: Any = starter(
        manifest, work_dir=work_dir, task_key=task_key, apiserver=apiserver, tls=tls
    )
    if inspect.isawaitable(started):
        started = await started
    handle: DataPlaneHandle = started
    return handle
