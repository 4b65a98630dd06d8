"""`flamectl up`, `down` and `status`: the embedded control plane on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from flame.cli.errors import CliError
from flame.embedded import plane

__all__ = ["down", "status", "up"]

_DEFAULT_HOME = Path.home() / ".flame"

_home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder for its state, logs and config.yaml (default {_DEFAULT_HOME}).",
)


@click.command()
@_home_option
def up(home: Path | None) -> None:
    """Start a local control plane and return once it is healthy."""
    folder = (home or _DEFAULT_HOME).resolve()
    try:
        components = plane.up(folder, log=lambda line: click.echo(f"  {line}"))
    except (RuntimeError, TimeoutError) as error:
        plane.down(folder)
        raise CliError(f"the control plane did not start: {error}") from None
    unhealthy = [
        item
        for item in plane.status(folder)
        if not item.running or item.serving not in ("-", "SERVING")
    ]
    if unhealthy:
        plane.down(folder)
        names = ", ".join(item.name for item in unhealthy)
        raise CliError(f"not healthy: {names}; see {folder / 'logs'}")
    apiserver = next(item for item in components if item.name == "apiserver")
    click.echo(f"Flame is up: apiserver at {apiserver.address}")
    click.echo(f"flamectl config: {folder / 'config.yaml'}")


@click.command()
@_home_option
def down(home: Path | None) -> None:
    """Stop the local control plane started by `flamectl up`."""
    stopped = plane.down((home or _DEFAULT_HOME).resolve())
    if not stopped:
        click.echo("nothing was running")
    for component in stopped:
        click.echo(f"stopped {component.name} (pid {component.pid})")


@click.command()
@_home_option
def status(home: Path | None) -> None:
    """Show each local component's process and health."""
    components = plane.status((home or _DEFAULT_HOME).resolve())
    if not components:
        raise CliError("no local control plane runs here; start one with `flamectl up`")
    click.echo(f"{'COMPONENT':<12} {'PID':>7}  {'ADDRESS':<22} {'PROCESS':<8} HEALTH")
    for item in components:
        process = "running" if item.running else "exited"
        click.echo(f"{item.name:<12} {item.pid:>7}  {item.address:<22} {process:<8} {item.serving}")
    if not all(item.running for item in components):
        raise SystemExit(1)
