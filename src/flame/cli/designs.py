"""Commands on designs, their schema revisions and their code revisions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
from google.protobuf import field_mask_pb2

from flame.cli import files
from flame.cli.connection import connect, list_all
from flame.cli.errors import CliError
from flame.cli.output import (
    Column,
    format_time,
    limit_option,
    message_to_dict,
    output_option,
    show_list,
    show_one,
)
from flame.design.v1 import code_pb2, design_pb2
from flame.design.v1 import design_service_pb2 as pb

__all__ = [
    "create_code",
    "create_design",
    "get_code",
    "get_code_revisions",
    "get_design",
    "get_designs",
    "get_schema",
    "get_schemas",
    "remove_code",
    "remove_design",
    "remove_schema",
    "store_schema",
    "update_design",
]

# UploadCode sends the zip in messages of this size, well below the message limit.
_CHUNK_BYTES = 1024 * 1024

_design_option = click.option(
    "--design", "design_id", required=True, metavar="ID", help="The design's id."
)
_revision_option = click.option(
    "--revision",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="The revision [default: the latest].",
)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("design")
@click.argument("design_id", metavar="ID")
@click.option("-d", "--desc", "description", default="", help="Description.")
@click.option("-n", "--name", default="", help="Display name.")
def create_design(design_id: str, description: str, name: str) -> None:
    """Create a design, with no schema and no code yet."""
    design = design_pb2.Design(id=design_id, name=name, description=description)
    with connect(design=design_id) as api:
        api.designs.CreateDesign(pb.CreateDesignRequest(design=design))
    click.echo(f"design '{design_id}' created")


_DESIGN_COLUMNS: list[Column[design_pb2.Design]] = [
    Column("ID", lambda d: d.id),
    Column("NAME", lambda d: d.name),
    Column("SCHEMA-REV", lambda d: str(d.latest_schema_revision)),
    Column("CODE-REV", lambda d: str(d.latest_code_revision)),
    Column("CREATED", lambda d: format_time(d.create_time)),
]


@click.command("designs")
@limit_option
@output_option
def get_designs(limit: int | None, output_format: str) -> None:
    """List your designs."""
    with connect() as api:
        designs = list_all(
            api.designs.ListDesigns, pb.ListDesignsRequest(), lambda r: r.designs, limit=limit
        )
    show_list(designs, _DESIGN_COLUMNS, output_format, message_to_dict)


@click.command("design")
@click.argument("design_id", metavar="ID")
@output_option
def get_design(design_id: str, output_format: str) -> None:
    """Show a design and a summary of its latest schema."""
    with connect(design=design_id) as api:
        response = api.designs.GetDesign(pb.GetDesignRequest(design_id=design_id))
    show_one(response, _design_fields, output_format, _design_data)


def _design_fields(response: pb.GetDesignResponse) -> list[tuple[str, str]]:
    design = response.design
    fields = [
        ("ID", design.id),
        ("NAME", design.name),
        ("DESCRIPTION", design.description),
        ("OWNER", design.owner),
        ("SCHEMA-REV", str(design.latest_schema_revision)),
        ("CODE-REV", str(design.latest_code_revision)),
        ("CREATED", format_time(design.create_time)),
        ("UPDATED", format_time(design.update_time)),
    ]
    if response.HasField("schema"):
        fields += _topology_fields(response.schema)
    return fields


def _design_data(response: pb.GetDesignResponse) -> dict[str, Any]:
    data = message_to_dict(response.design)
    if response.HasField("schema"):
        data["schema"] = files.schema_to_dict(response.schema)
    return data


@click.command("design")
@click.argument("design_id", metavar="ID")
@click.option("-n", "--name", default=None, help="New display name.")
@click.option("-d", "--desc", "description", default=None, help="New description.")
def update_design(design_id: str, name: str | None, description: str | None) -> None:
    """Change the name or the description of a design."""
    given = {"name": name, "description": description}
    paths = [field for field, value in given.items() if value is not None]
    if not paths:
        raise click.UsageError("nothing to update: give --name or --desc")
    design = design_pb2.Design(id=design_id, name=name or "", description=description or "")
    request = pb.UpdateDesignRequest(
        design=design, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    with connect(design=design_id) as api:
        api.designs.UpdateDesign(request)
    click.echo(f"design '{design_id}' updated")


@click.command("design")
@click.argument("design_id", metavar="ID")
@click.option("-f", "--force", is_flag=True, help="Delete even while jobs refer to it.")
def remove_design(design_id: str, force: bool) -> None:
    """Delete a design with its schemas and code."""
    with connect(design=design_id) as api:
        api.designs.DeleteDesign(pb.DeleteDesignRequest(design_id=design_id, force=force))
    click.echo(f"design '{design_id}' removed")


@click.command("schema")
@click.argument("file", metavar="FILE", type=_FILE)
@_design_option
def store_schema(file: Path, design_id: str) -> None:
    """Store a schema.json file as the design's next schema revision."""
    schema = files.load_schema(file)
    with connect(design=design_id) as api:
        request = pb.CreateSchemaRequest(design_id=design_id, schema=schema)
        stored = api.designs.CreateSchema(request).schema
    click.echo(f"schema revision {stored.revision} stored for design '{design_id}'")


@click.command("schema")
@_design_option
@_revision_option
@output_option
def get_schema(design_id: str, revision: int | None, output_format: str) -> None:
    """Show a schema revision.

    JSON and YAML print it in the schema.json format, so the output can be
    edited and stored again with `update schema`.
    """
    request = pb.GetSchemaRequest(design_id=design_id, revision=revision or 0)
    with connect(design=design_id) as api:
        schema = api.designs.GetSchema(request).schema
    show_one(schema, _schema_fields, output_format, files.schema_to_dict)


def _schema_fields(schema: design_pb2.Schema) -> list[tuple[str, str]]:
    return [
        ("REVISION", str(schema.revision)),
        ("NAME", schema.name),
        ("DESCRIPTION", schema.description),
        ("CREATED", format_time(schema.create_time)),
        *_topology_fields(schema),
    ]


def _topology_fields(schema: design_pb2.Schema) -> list[tuple[str, str]]:
    return [
        ("ROLES", ", ".join(_role_label(role) for role in schema.roles)),
        ("CHANNELS", ", ".join(_channel_label(channel) for channel in schema.channels)),
    ]


def _role_label(role: design_pb2.Role) -> str:
    return f"{role.name} (data)" if role.is_data_consumer else role.name


def _channel_label(channel: design_pb2.Channel) -> str:
    groups = ",".join(channel.group_by.value)
    return f"{channel.name} [{'-'.join(channel.pair)}] {{{groups}}}"


_SCHEMA_COLUMNS: list[Column[design_pb2.Schema]] = [
    Column("REVISION", lambda s: str(s.revision)),
    Column("NAME", lambda s: s.name),
    Column("ROLES", lambda s: ",".join(role.name for role in s.roles)),
    Column("CHANNELS", lambda s: ",".join(channel.name for channel in s.channels)),
    Column("CREATED", lambda s: format_time(s.create_time)),
]


@click.command("schemas")
@_design_option
@limit_option
@output_option
def get_schemas(design_id: str, limit: int | None, output_format: str) -> None:
    """List the schema revisions of a design, newest first."""
    request = pb.ListSchemasRequest(design_id=design_id)
    with connect(design=design_id) as api:
        schemas = list_all(api.designs.ListSchemas, request, lambda r: r.schemas, limit=limit)
    show_list(schemas, _SCHEMA_COLUMNS, output_format, files.schema_to_dict)


@click.command("schema")
@_design_option
def remove_schema(design_id: str) -> None:
    """Delete every schema revision of a design."""
    with connect(design=design_id) as api:
        api.designs.DeleteSchema(pb.DeleteSchemaRequest(design_id=design_id))
    click.echo(f"schemas of design '{design_id}' removed")


@click.command("code")
@click.argument("file", metavar="ZIP", type=_FILE)
@_design_option
def create_code(file: Path, design_id: str) -> None:
    """Upload a code bundle as the design's next code revision.

    ZIP holds one top-level folder per role, each with a main.py.
    """
    with connect(design=design_id) as api:
        code = api.designs.UploadCode(_upload_requests(file, design_id)).code
    roles = ", ".join(code.roles)
    click.echo(f"code revision {code.revision} stored for design '{design_id}' (roles: {roles})")


def _upload_requests(file: Path, design_id: str) -> Iterator[pb.UploadCodeRequest]:
    metadata = pb.UploadCodeMetadata(design_id=design_id, file_name=file.name)
    yield pb.UploadCodeRequest(metadata=metadata)
    with file.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            yield pb.UploadCodeRequest(chunk=chunk)


@click.command("code")
@_design_option
@_revision_option
@click.option(
    "-f",
    "--file",
    "target",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the zip [default: ./ID.zip].",
)
def get_code(design_id: str, revision: int | None, target: Path | None) -> None:
    """Download a code revision as a zip file."""
    target = target or Path(f"{design_id}.zip")
    request = pb.DownloadCodeRequest(design_id=design_id, revision=revision or 0)
    with connect(design=design_id) as api:
        code = _write_download(api.designs.DownloadCode(request), target)
    click.echo(f"wrote {target}: code revision {code.revision} ({code.size_bytes} bytes)")


def _write_download(
    responses: Iterable[pb.DownloadCodeResponse], target: Path
) -> code_pb2.CodeRevision:
    # Write beside the target and rename at the end, so a failed download never
    # leaves a truncated zip under the requested name.
    partial = target.with_name(target.name + ".part")
    digest, code = hashlib.sha256(), code_pb2.CodeRevision()
    try:
        with partial.open("wb") as stream:
            for response in responses:
                if response.HasField("code"):
                    code = response.code
                else:
                    digest.update(response.chunk)
                    stream.write(response.chunk)
        if code.sha256 and digest.hexdigest() != code.sha256:
            raise CliError(f"the download of {target} is corrupt (SHA-256 mismatch)")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return code


_CODE_COLUMNS: list[Column[code_pb2.CodeRevision]] = [
    Column("REVISION", lambda c: str(c.revision)),
    Column("FILE", lambda c: c.file_name),
    Column("SIZE", lambda c: str(c.size_bytes)),
    Column("SHA256", lambda c: c.sha256[:12]),
    Column("ROLES", lambda c: ",".join(c.roles)),
    Column("CREATED", lambda c: format_time(c.create_time)),
]


@click.command("code-revisions")
@_design_option
@limit_option
@output_option
def get_code_revisions(design_id: str, limit: int | None, output_format: str) -> None:
    """List the code revisions of a design, newest first."""
    request = pb.ListCodeRevisionsRequest(design_id=design_id)
    with connect(design=design_id) as api:
        revisions = list_all(
            api.designs.ListCodeRevisions, request, lambda r: r.revisions, limit=limit
        )
    show_list(revisions, _CODE_COLUMNS, output_format, message_to_dict)


@click.command("code")
@_design_option
def remove_code(design_id: str) -> None:
    """Delete every code revision of a design."""
    with connect(design=design_id) as api:
        api.designs.DeleteCode(pb.DeleteCodeRequest(design_id=design_id))
    click.echo(f"code of design '{design_id}' removed")
