"""`flame-controller`: serve the control-plane resource services over MongoDB."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from flame.controller.app import (
    DEFAULT_MAX_CODE_BYTES,
    ControllerSettings,
    controller_services,
    open_database,
    open_stores,
)
from flame.controller.app import bootstrap_admin as create_bootstrap_admin
from flame.controller.caller import InternalKeyInterceptor
from flame.controller.events import EventPublisher
from flame.controller.jobbuilder import Broker, PlatformParams, Registry
from flame.controller.lifecycle import JobManager
from flame.notify.v1 import notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.command import announce, run_server, server_command_options, server_options
from flame.rpc.server import serve_until_signal, start_server
from flame.rpc.tls import ClientTls

__all__ = ["main"]

# The bootstrap admin's token comes from the environment, never a flag, so it
# does not show in process listings.
BOOTSTRAP_TOKEN_ENV = "FLAME_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN"


def _parse_sort_value(value: str, option: str) -> tuple[str, str]:
    sort, separator, rest = value.partition("=")
    if not separator or not sort or not rest:
        raise click.BadParameter(f"expected SORT=VALUE, got '{value}'", param_hint=option)
    return sort, rest


@click.command(context_settings={"auto_envvar_prefix": "FLAME_CONTROLLER"})
@server_command_options
@click.option("--mongo-uri", default="mongodb://127.0.0.1:27017/", show_default=True)
@click.option("--database", default="flame", show_default=True)
@click.option(
    "--internal-key", required=True, help="Secret shared with the apiserver (env recommended)."
)
@click.option(
    "--broker",
    "brokers",
    multiple=True,
    help="Data-plane broker handed to tasks, SORT=HOST[:PORT], e.g. mqtt=127.0.0.1:1883.",
)
@click.option("--registry", default="", help="Model registry handed to tasks, SORT=URI.")
@click.option("--notifier", default="", help="Notifier address, host:port; needed to run jobs.")
@click.option("--notifier-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--notifier-plaintext", is_flag=True, help="Reach the notifier without TLS.")
@click.option("--max-code-bytes", default=DEFAULT_MAX_CODE_BYTES, show_default=True)
@click.option(
    "--bootstrap-admin", default="", help=f"Admin user to create with ${BOOTSTRAP_TOKEN_ENV}."
)
def main(
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
    log_level: str,
    mongo_uri: str,
    database: str,
    internal_key: str,
    brokers: tuple[str, ...],
    registry: str,
    notifier: str,
    notifier_ca: Path | None,
    notifier_plaintext: bool,
    max_code_bytes: int,
    bootstrap_admin: str,
) -> None:
    """Run the Flame controller."""
    options = server_options(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        plaintext=plaintext,
    )
    registry_sort, registry_uri = (
        _parse_sort_value(registry, "--registry") if registry else ("", "")
    )
    settings = ControllerSettings(
        params=PlatformParams(
            brokers=tuple(Broker(*_parse_sort_value(item, "--broker")) for item in brokers),
            registry=Registry(registry_sort, registry_uri),
        ),
        max_code_bytes=max_code_bytes,
    )
    admin_token = os.environ.get(BOOTSTRAP_TOKEN_ENV, "")
    if bootstrap_admin and not admin_token:
        raise click.UsageError(f"--bootstrap-admin needs ${BOOTSTRAP_TOKEN_ENV}")

    if notifier and not (notifier_plaintext or notifier_ca):
        raise click.UsageError("give --notifier-ca, or --notifier-plaintext")
    notifier_tls = None if notifier_plaintext else ClientTls(ca_file=notifier_ca)

    async def serve() -> None:
        client, db = await open_database(mongo_uri, database)
        stores = await open_stores(db)
        if bootstrap_admin:
            await create_bootstrap_admin(stores, bootstrap_admin, admin_token)
        channel = open_channel(notifier, tls=notifier_tls) if notifier else None
        publisher = (
            EventPublisher(notify_service_pb2_grpc.NotifyServiceStub(channel)) if channel else None
        )
        manager = JobManager(stores.jobs, publisher)
        running = await start_server(
            controller_services(stores, settings, manager),
            options,
            interceptors=[InternalKeyInterceptor(internal_key)],
        )
        stopping = asyncio.Event()
        reconciler = asyncio.create_task(manager.run(stopping))
        announce("flame-controller", running)

        async def close() -> None:
            stopping.set()
            await reconciler
            if channel is not None:
                await channel.close(None)
            await client.close()

        await serve_until_signal(running, on_stop=close)

    run_server("flame-controller", log_level, serve)
