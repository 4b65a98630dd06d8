"""`flame-deployer`: the local deployer of one compute.

It registers the compute, follows the compute's events (`compute/<id>`) and runs
a `flamelet` process for each task the controller places on it, until SIGTERM
or SIGINT, when it stops them all and exits 0. Options also read
`FLAME_DEPLOYER_<OPTION>`; the two secrets come from the environment only:
`FLAME_DEPLOYER_ADMIN_TOKEN` (an admin's API token, used once to register) and
`FLAME_DEPLOYER_COMPUTE_KEY` (the compute's api key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from flame.compute.v1.compute_service_pb2_grpc import ComputeServiceStub
from flame.deployer.client import ComputeClient
from flame.deployer.deployer import ControlPlaneError, Deployer
from flame.deployer.launcher import FlameletSettings, LocalLauncher
from flame.notifier.client import follow_events
from flame.notify.v1.notify_service_pb2_grpc import NotifyServiceStub
from flame.rpc.client import open_channel
from flame.rpc.logs import configure_logging
from flame.rpc.tls import ClientTls

__all__ = ["main"]

_log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "FLAME_DEPLOYER_ADMIN_TOKEN"
COMPUTE_KEY_ENV = "FLAME_DEPLOYER_COMPUTE_KEY"
_MIN_KEY_LENGTH = 16
_REGISTER_SECONDS = 60.0

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@dataclass(frozen=True)
class _Setup:
    compute_id: str
    region: str
    apiserver: str
    notifier: str
    tls: ClientTls | None
    admin_token: str
    compute_key: str
    flamelet: FlameletSettings
    grace_seconds: float


def _default_flamelet() -> str:
    return str(Path(sys.executable).parent / "flamelet")


@click.command(context_settings={"auto_envvar_prefix": "FLAME_DEPLOYER"})
@click.option("--compute-id", default="default", show_default=True, help="This compute's id.")
@click.option("--region", default="default/us", show_default=True, help="This compute's region.")
@click.option("--apiserver", required=True, help="host:port of the apiserver.")
@click.option("--notifier", required=True, help="host:port of the notifier.")
@click.option("--ca-file", type=_FILE, help="CA certificate (PEM) to verify the servers with.")
@click.option("--plaintext", is_flag=True, help="Connect without TLS (loopback and tests only).")
@click.option(
    "--work-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the agents' work and logs (default ~/.flame/deployer/<compute id>).",
)
@click.option(
    "--flamelet",
    "flamelet_path",
    type=_FILE,
    default=_default_flamelet,
    show_default="the flamelet beside the Python interpreter",
    help="The flamelet program.",
)
@click.option(
    "--stop-grace-seconds",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="How long a flamelet has to exit after SIGTERM before SIGKILL.",
)
@click.option("--log-level", default="INFO", show_default=True)
def main(
    compute_id: str,
    region: str,
    apiserver: str,
    notifier: str,
    ca_file: Path | None,
    plaintext: bool,
    work_root: Path | None,
    flamelet_path: Path,
    stop_grace_seconds: float,
    log_level: str,
) -> None:
    """Run the task agents of one compute as processes on this machine."""
    if ca_file and plaintext:
        raise click.UsageError("--ca-file and --plaintext exclude each other")
    root = (work_root or Path.home() / ".flame" / "deployer" / compute_id).resolve()
    ca = ca_file.resolve() if ca_file else None
    setup = _Setup(
        compute_id=compute_id,
        region=region,
        apiserver=apiserver,
        notifier=notifier,
        tls=None if plaintext else ClientTls(ca_file=ca),
        admin_token=_secret(ADMIN_TOKEN_ENV, "an admin's API token"),
        compute_key=_secret(COMPUTE_KEY_ENV, "the compute's api key", _MIN_KEY_LENGTH),
        flamelet=FlameletSettings(
            flamelet_path.resolve(),
            apiserver,
            notifier,
            root,
            ca_file=ca,
            plaintext=plaintext,
            fork=flamelet_path.resolve() == Path(_default_flamelet()).resolve(),
        ),
        grace_seconds=stop_grace_seconds,
    )
    configure_logging("flame-deployer", log_level)
    asyncio.run(_serve(setup))


def _secret(name: str, what: str, min_length: int = 1) -> str:
    value = os.environ.get(name, "")
    if len(value) < min_length:
        at_least = f", at least {min_length} characters" if min_length > 1 else ""
        raise click.UsageError(f"set {name} in the environment to {what}{at_least}")
    return value


async def _serve(setup: _Setup) -> None:
    """Register, then deploy until a signal comes; then stop every agent."""
    stop = _stop_on_signals()
    async with (
        open_channel(setup.apiserver, tls=setup.tls) as api_channel,
        open_channel(setup.notifier, tls=setup.tls) as notifier_channel,
    ):
        client = ComputeClient(ComputeServiceStub(api_channel), setup.compute_id, setup.compute_key)
        if not await _register(client, setup, stop):
            return
        launcher = LocalLauncher(setup.flamelet, grace_seconds=setup.grace_seconds)
        deployer = Deployer(client, launcher)
        for adopted in launcher.adopt():
            deployer.adopt(adopted.job_id, adopted.task_id, adopted.agent)
        monitor = asyncio.create_task(deployer.monitor())
        try:
            await follow_events(
                NotifyServiceStub(notifier_channel),
                f"compute/{setup.compute_id}",
                handle=deployer.handle,
                stop=stop,
            )
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await deployer.shutdown()
    _log.info("stopped")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        _log.info("stopping", extra={"signal": sig.name})
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop


async def _register(client: ComputeClient, setup: _Setup, stop: asyncio.Event) -> bool:
    """Register the compute; False if a signal came first.

    Raises:
        click.ClickException: Registration was refused, or the apiserver stayed unreachable.
    """
    registration = asyncio.ensure_future(
        client.register(setup.region, setup.admin_token, within=_REGISTER_SECONDS)
    )
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({registration, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not registration.done():
        registration.cancel()
        return False
    try:
        created = registration.result()
    except ControlPlaneError as error:
        raise click.ClickException(_registration_failure(setup, error)) from None
    _log.info("compute registered", extra={"compute": setup.compute_id, "new": created})
    return True


def _registration_failure(setup: _Setup, error: ControlPlaneError) -> str:
    message = f"cannot register compute '{setup.compute_id}' at {setup.apiserver}: {error}"
    if error.reason == "COMPUTE_ALREADY_EXISTS":
        message += (
            f". It is registered with another api key: set {COMPUTE_KEY_ENV} to that key,"
            " or have an admin delete the compute"
        )
    return message
