"""Page sizes and opaque page tokens for every List call.

A token names the sort key of the last item returned and a fingerprint of the
request's other fields, so a token cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from flame.rpc.errors import FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PageRequest",
    "decode_token",
    "encode_token",
    "list_page",
    "next_page",
    "page_size",
]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is coerced; negative is refused."""
    if requested < 0:
        raise InvalidArgument(
            "INVALID_ARGUMENT",
            "page_size must not be negative",
            violations=[FieldViolation("page_size", "must not be negative")],
        )
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def _fingerprint(query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_token(last_key: Any, query: Any) -> str:
    """A token resuming after `last_key` for the same `query`."""
    raw = json.dumps({"after": last_key, "query": _fingerprint(query)}, default=str)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, query: Any) -> Any:
    """The sort key to resume after, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        content = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, fingerprint = content["after"], content["query"]
    except (ValueError, KeyError, TypeError):
        raise _bad_token() from None
    if fingerprint != _fingerprint(query):
        raise _bad_token()
    return after


def _bad_token() -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token is not a token from a previous call with the same arguments",
        violations=[FieldViolation("page_token", "unknown or for another query")],
    )


def next_page(
    items: list[T], limit: int, key: Callable[[T], Any], query: Any
) -> tuple[list[T], str]:
    """Split `items` (fetched with `limit + 1`) into the page and the next token."""
    if len(items) <= limit:
        return items, ""
    page = items[:limit]
    return page, encode_token(key(page[-1]), query)


class PageRequest(Protocol):
    """What every List request has."""

    page_size: int
    page_token: str


async def list_page(
    request: PageRequest,
    query: Any,
    fetch: Callable[[Any, int], Awaitable[list[T]]],
    key: Callable[[T], Any],
) -> tuple[list[T], str]:
    """One page of a List call and the token of the next.

    `fetch(cursor, count)` reads up to `count` items after `cursor` (None: from the
    start); `key` gives an item's cursor; `query` is what the token is bound to."""
    limit = page_size(request.page_size)
    cursor = decode_token(request.page_token, query)
    return next_page(await fetch(cursor, limit + 1), limit, key, query)
