"""Commands on users (`flamectl user ...`) and on your API tokens (`flamectl token ...`)."""

from __future__ import annotations

import click

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
from flame.user.v1 import user_pb2
from flame.user.v1 import user_service_pb2 as pb

__all__ = ["token", "user"]

_USER_COLUMNS: list[Column[user_pb2.User]] = [
    Column("ID", lambda u: u.id),
    Column("ADMIN", lambda u: "yes" if u.is_admin else "no"),
    Column("CREATED", lambda u: format_time(u.create_time)),
]

_TOKEN_COLUMNS: list[Column[user_pb2.ApiToken]] = [
    Column("ID", lambda t: t.id),
    Column("DESCRIPTION", lambda t: t.description),
    Column("CREATED", lambda t: format_time(t.create_time)),
    Column("LAST-USED", lambda t: format_time(t.last_used_time)),
]


@click.group()
def user() -> None:
    """Manage users (creating and listing them needs an admin token)."""


@user.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Let the user manage users and computes.")
def create_user(name: str, admin: bool) -> None:
    """Create a user; prints its first API token, alone, on stdout."""
    request = pb.CreateUserRequest(user=user_pb2.User(id=name, is_admin=admin))
    with connect(user=name) as api:
        response = api.users.CreateUser(request)
    click.echo(response.token)


@user.command("list")
@limit_option
@output_option
def list_users(limit: int | None, output_format: str) -> None:
    """List the users."""
    with connect() as api:
        users = list_all(api.users.ListUsers, pb.ListUsersRequest(), lambda r: r.users, limit=limit)
    show_list(users, _USER_COLUMNS, output_format, message_to_dict)


@user.command("whoami")
@output_option
def whoami(output_format: str) -> None:
    """Show the user the configured token authenticates."""
    with connect() as api:
        found = api.users.GetUser(pb.GetUserRequest()).user
    show_one(found, _user_fields, output_format, message_to_dict)


def _user_fields(found: user_pb2.User) -> list[tuple[str, str]]:
    return [(column.header, column.value(found)) for column in _USER_COLUMNS]


@click.group()
def token() -> None:
    """Manage your API tokens."""


@token.command("create")
@click.option("-d", "--desc", "description", default="", help="A label, e.g. the machine.")
def create_token(description: str) -> None:
    """Create another API token; prints its secret, alone, on stdout."""
    with connect() as api:
        response = api.users.CreateApiToken(pb.CreateApiTokenRequest(description=description))
    click.echo(response.token)


@token.command("list")
@limit_option
@output_option
def list_tokens(limit: int | None, output_format: str) -> None:
    """List your API tokens (never their secrets)."""
    request = pb.ListApiTokensRequest()
    with connect() as api:
        tokens = list_all(api.users.ListApiTokens, request, lambda r: r.api_tokens, limit=limit)
    show_list(tokens, _TOKEN_COLUMNS, output_format, message_to_dict)


@token.command("delete")
@click.argument("token_id", metavar="ID")
def delete_token(token_id: str) -> None:
    """Revoke one of your API tokens."""
    with connect(token=token_id) as api:
        api.users.DeleteApiToken(pb.DeleteApiTokenRequest(api_token_id=token_id))
    click.echo(f"token '{token_id}' deleted")
