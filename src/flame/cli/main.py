"""`flamectl`: the root command group, its global options, and every subcommand."""

from __future__ import annotations

from pathlib import Path

import click

from flame.cli import datasets, designs, jobs, local, runs, users
from flame.cli.config import DEFAULT_CONFIG_PATH, DEFAULT_TIMEOUT_SECONDS, Settings

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLAME_CONFIG",
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    show_envvar=True,
    help="The configuration file (endpoint, token, TLS).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Deadline of each call to the apiserver.",
)
@click.version_option(package_name="flame-fl")
@click.pass_context
def main(ctx: click.Context, config_path: Path, timeout: float) -> None:
    """Manage Flame designs, datasets, jobs, users and tokens.

    \b
    Shell completion, e.g. for bash (zsh and fish likewise):
        eval "$(_FLAMECTL_COMPLETE=bash_source flamectl)"
    """
    ctx.obj = Settings(config_path=config_path, timeout=timeout)


def _verb(name: str, help_text: str, *commands: click.Command) -> click.Group:
    group = click.Group(name, help=help_text)
    for command in commands:
        group.add_command(command)
    return group


# Subcommand registration: every command and group of flamectl is added here.
main.add_command(
    _verb(
        "create",
        "Create a resource.",
        designs.create_design,
        designs.store_schema,
        designs.create_code,
        datasets.create_dataset,
        jobs.create_job,
    )
)
main.add_command(
    _verb(
        "get",
        "Show one resource or list them.",
        designs.get_designs,
        designs.get_design,
        designs.get_schema,
        designs.get_schemas,
        designs.get_code,
        designs.get_code_revisions,
        datasets.get_datasets,
        datasets.get_dataset,
        jobs.get_jobs,
        jobs.get_job,
        jobs.get_tasks,
        jobs.get_task,
    )
)
main.add_command(
    _verb(
        "update",
        "Change a resource.",
        designs.update_design,
        designs.store_schema,
        datasets.update_dataset,
        jobs.update_job,
    )
)
main.add_command(
    _verb(
        "remove",
        "Delete a resource.",
        designs.remove_design,
        designs.remove_schema,
        designs.remove_code,
        datasets.remove_dataset,
        jobs.remove_job,
    )
)
main.add_command(_verb("start", "Start a job.", jobs.start_job))
main.add_command(_verb("stop", "Stop a job.", jobs.stop_job))
main.add_command(users.user)
main.add_command(users.token)
main.add_command(local.up)
main.add_command(local.down)
main.add_command(local.status)
main.add_command(runs.logs)
main.add_command(_verb("watch", "Follow a resource live.", runs.watch_job))
