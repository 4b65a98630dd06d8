"""Commands on datasets."""

from __future__ import annotations

from pathlib import Path

import click
from google.protobuf import field_mask_pb2

from flame.cli import files
from flame.cli.connection import connect, list_all
from flame.cli.output import (
    Column,
    format_time,
    limit_option,
    message_to_dict,
    output_option,
    show_list,
    show_one,
)
from flame.data.v1 import dataset_pb2
from flame.data.v1 import dataset_service_pb2 as pb

__all__ = ["create_dataset", "get_dataset", "get_datasets", "remove_dataset", "update_dataset"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

_COLUMNS: list[Column[dataset_pb2.Dataset]] = [
    Column("ID", lambda d: d.id),
    Column("NAME", lambda d: d.name),
    Column("URL", lambda d: d.url),
    Column("FORMAT", lambda d: d.data_format),
    Column("REALM", lambda d: d.realm),
    Column("COMPUTE", lambda d: d.compute_id),
    Column("PUBLIC", lambda d: "yes" if d.is_public else "no"),
    Column("OWNER", lambda d: d.owner),
]


@click.command("dataset")
@click.argument("file", metavar="FILE", type=_FILE)
def create_dataset(file: Path) -> None:
    """Register a dataset from a dataset.json file; prints its id."""
    dataset = files.load_dataset(file).message
    with connect(url=dataset.url, realm=dataset.realm) as api:
        created = api.datasets.CreateDataset(pb.CreateDatasetRequest(dataset=dataset)).dataset
    click.echo(created.id)


@click.command("datasets")
@click.option("-a", "--all", "include_public", is_flag=True, help="Include public datasets.")
@limit_option
@output_option
def get_datasets(include_public: bool, limit: int | None, output_format: str) -> None:
    """List your datasets, and with --all everyone's public ones."""
    request = pb.ListDatasetsRequest(include_public=include_public)
    with connect() as api:
        datasets = list_all(api.datasets.ListDatasets, request, lambda r: r.datasets, limit=limit)
    show_list(datasets, _COLUMNS, output_format, message_to_dict)


@click.command("dataset")
@click.argument("dataset_id", metavar="ID")
@output_option
def get_dataset(dataset_id: str, output_format: str) -> None:
    """Show a dataset: your own, or a public one."""
    with connect(dataset=dataset_id) as api:
        dataset = api.datasets.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id)).dataset
    show_one(dataset, _fields, output_format, message_to_dict)


def _fields(dataset: dataset_pb2.Dataset) -> list[tuple[str, str]]:
    rows = [(column.header, column.value(dataset)) for column in _COLUMNS]
    return [
        *rows,
        ("DESCRIPTION", dataset.description),
        ("CREATED", format_time(dataset.create_time)),
        ("UPDATED", format_time(dataset.update_time)),
    ]


@click.command("dataset")
@click.argument("dataset_id", metavar="ID")
@click.argument("file", metavar="FILE", type=_FILE)
def update_dataset(dataset_id: str, file: Path) -> None:
    """Change a dataset from a dataset.json file.

    The fields the file sets are updated; the others keep their values.
    """
    dataset, fields = files.load_dataset(file)
    if not fields:
        raise click.UsageError(f"{file} sets no field to update")
    dataset.id = dataset_id
    request = pb.UpdateDatasetRequest(
        dataset=dataset, update_mask=field_mask_pb2.FieldMask(paths=fields)
    )
    with connect(dataset=dataset_id, url=dataset.url, realm=dataset.realm) as api:
        api.datasets.UpdateDataset(request)
    click.echo(f"dataset '{dataset_id}' updated")


@click.command("dataset")
@click.argument("dataset_id", metavar="ID")
def remove_dataset(dataset_id: str) -> None:
    """Delete a dataset."""
    with connect(dataset=dataset_id) as api:
        api.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=dataset_id))
    click.echo(f"dataset '{dataset_id}' removed")
