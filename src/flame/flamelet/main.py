"""`flamelet`: the agent of one task, started by a deployer.

Exit status: 0 once the task's final state is reported (or on SIGTERM/SIGINT
before the task started); 1 when the agent could not do its job (the task key
was refused, the final state could not be reported); 2 on a usage error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import click

from flame.agent.v1 import agent_service_pb2_grpc
from flame.flamelet.agent import TASK_KEY_ENV, AgentSettings, TaskAgent
from flame.flamelet.api import AgentApi
from flame.flamelet.broker import BROKER_PASSWORD_ENV, BrokerCredentials, with_broker_credentials
from flame.flamelet.retry import RetryPolicy
from flame.flamelet.seam import load_dataplane
from flame.flamelet.workdir import WorkArea, check_name
from flame.notify.v1 import notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.logs import configure_logging
from flame.rpc.tls import ClientTls

__all__ = ["main"]

_log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"[^\s:/]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")


def _folder_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value, f"--{param.name}".replace("_", "-"))
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return value


@click.command(context_settings={"auto_envvar_prefix": "FLAME_FLAMELET"})
@click.option("--job-id", required=True, callback=_folder_name, help="The task's job.")
@click.option("--task-id", required=True, callback=_folder_name, help="The task to run.")
@click.option("--apiserver", required=True, callback=_address, help="HOST:PORT of the apiserver.")
@click.option("--notifier", required=True, callback=_address, help="HOST:PORT of the notifier.")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA (PEM) of the apiserver's and notifier's certificates (default: the system roots).",
)
@click.option("--plaintext", is_flag=True, help="Connect without TLS (loopback and tests only).")
@click.option(
    "--work-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of work folders, <work-root>/<job>/<task>/ (default: a fresh temp folder).",
)
@click.option("--keep-work-dir", is_flag=True, help="Leave the work folder in place at exit.")
@click.option(
    "--python", default=sys.executable, show_default=True, help="Interpreter of the role code."
)
@click.option(
    "--stop-grace-seconds",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Time between SIGTERM and SIGKILL when stopping the role code.",
)
@click.option(
    "--install-dependencies",
    is_flag=True,
    help="pip-install the config's dependencies into <work-root>/<job>/venv and run with it.",
)
@click.option(
    "--broker-username",
    default="",
    help="MQTT username of the data plane; {job} stands for the job id (default: anonymous). "
    f"The password comes from ${BROKER_PASSWORD_ENV}.",
)
@click.option(
    "--broker-ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA (PEM) of the MQTT broker's certificate: connect to it with TLS.",
)
@click.option("--log-level", default="INFO", show_default=True)
def main(
    job_id: str,
    task_id: str,
    apiserver: str,
    notifier: str,
    ca_file: Path | None,
    plaintext: bool,
    work_root: Path | None,
    keep_work_dir: bool,
    python: str,
    stop_grace_seconds: float,
    install_dependencies: bool,
    broker_username: str,
    broker_ca_file: Path | None,
    log_level: str,
) -> None:
    """Run one task of a Flame job: wait for START_JOB, run the role code, report its end.

    The task key is read from the FLAME_TASK_KEY environment variable only, so
    that it never shows in a process listing.
    """
    # Popped so that nothing this process starts (pip, the role code) inherits it.
    task_key = os.environ.pop(TASK_KEY_ENV, "")
    if not task_key:
        raise click.UsageError(f"set the task key in the {TASK_KEY_ENV} environment variable")
    tls = _client_tls(ca_file, plaintext)
    configure_logging("flamelet", log_level)
    area = WorkArea(
        root=work_root or Path(tempfile.mkdtemp(prefix="flamelet-")),
        job_id=job_id,
        task_id=task_id,
        owned_root=work_root is None,
    )
    settings = AgentSettings(
        job_id=job_id,
        task_id=task_id,
        task_key=task_key,
        apiserver=apiserver,
        tls=tls,
        area=area,
        python=python,
        stop_grace_seconds=stop_grace_seconds,
        install_dependencies=install_dependencies,
    )
    credentials = BrokerCredentials(
        broker_username, os.environ.pop(BROKER_PASSWORD_ENV, ""), broker_ca_file
    )
    try:
        exit_code = asyncio.run(_run(settings, notifier, credentials))
    finally:
        if not keep_work_dir:
            area.remove()
    sys.exit(exit_code)


def _client_tls(ca_file: Path | None, plaintext: bool) -> ClientTls | None:
    if plaintext and ca_file:
        raise click.UsageError("--plaintext cannot be combined with --ca-file")
    # Without --ca-file, the servers' certificates are checked against the system roots.
    return None if plaintext else ClientTls(ca_file=ca_file)


async def _run(settings: AgentSettings, notifier: str, credentials: BrokerCredentials) -> int:
    _log.info(
        "flamelet started",
        extra={"job": settings.job_id, "task": settings.task_id, "work_root": settings.area.root},
    )
    async with (
        open_channel(settings.apiserver, tls=settings.tls) as api_channel,
        open_channel(notifier, tls=settings.tls) as notify_channel,
    ):
        api = AgentApi(
            agent_service_pb2_grpc.AgentServiceStub(api_channel),
            job_id=settings.job_id,
            task_id=settings.task_id,
            task_key=settings.task_key,
            policy=RetryPolicy(),
        )
        starter = load_dataplane()
        if starter is not None:
            starter = with_broker_credentials(starter, credentials)
        agent = TaskAgent(settings, api, start_dataplane=starter)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            stop = functools.partial(
                agent.stop, f"the task agent received {sig.name}", report_if_idle=False
            )
            loop.add_signal_handler(sig, stop)
        exit_code = await agent.run(notify_service_pb2_grpc.NotifyServiceStub(notify_channel))
    _log.info("flamelet exiting", extra={"exit_code": exit_code})
    return exit_code
