"""Users and their API tokens. Token secrets are stored only as SHA-256 hashes:
tokens are 240-bit random strings, so a fast hash is enough to make a leaked
database useless for logging in."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from flame.controller.store.documents import Document, now, timestamp
from flame.rpc.errors import AlreadyExists, NotFound
from flame.user.v1 import user_pb2

__all__ = ["UserStore", "hash_secret", "new_secret"]

_TOKEN_PREFIX = "flm_"
# Deleted users stay as tombstones: resources are keyed by user id, so a new user
# given a deleted user's id would inherit its designs, datasets and jobs.
_LIVE: Document = {"deleted": {"$ne": True}}


def new_secret(prefix: str = _TOKEN_PREFIX) -> str:
    """A fresh random secret (API token, task key, internal key)."""
    return prefix + secrets.token_urlsafe(30)


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


class UserStore:
    """Users and API tokens."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._users = db["users"]
        self._tokens = db["api_tokens"]

    async def ensure_indexes(self) -> None:
        await self._tokens.create_index("hash", unique=True)
        await self._tokens.create_index([("user_id", 1), ("_id", 1)])

    async def create_user(self, user_id: str, *, is_admin: bool) -> user_pb2.User:
        document = {"_id": user_id, "is_admin": is_admin, "create_time": now()}
        try:
            await self._users.insert_one(document)
        except DuplicateKeyError:
            raise AlreadyExists(
                "USER_ALREADY_EXISTS",
                f"user '{user_id}' already exists (the ids of deleted users are not reused)",
                metadata={"user": user_id},
            ) from None
        return _user(document)

    async def get_user(self, user_id: str) -> user_pb2.User:
        document = await self._users.find_one({"_id": user_id, **_LIVE})
        if document is None:
            raise NotFound(
                "USER_NOT_FOUND", f"user '{user_id}' not found", metadata={"user": user_id}
            )
        return _user(document)

    async def list_users(self, *, after: str | None, limit: int) -> list[user_pb2.User]:
        query: dict[str, Any] = dict(_LIVE) if after is None else {"_id": {"$gt": after}, **_LIVE}
        cursor = self._users.find(query).sort("_id", 1).limit(limit)
        return [_user(document) async for document in cursor]

    async def delete_user(self, user_id: str) -> None:
        result = await self._users.update_one(
            {"_id": user_id, **_LIVE}, {"$set": {"deleted": True, "delete_time": now()}}
        )
        if result.matched_count == 0:
            raise NotFound(
                "USER_NOT_FOUND", f"user '{user_id}' not found", metadata={"user": user_id}
            )
        await self._tokens.delete_many({"user_id": user_id})

    async def create_token(
        self, user_id: str, description: str, *, secret: str | None = None
    ) -> tuple[user_pb2.ApiToken, str]:
        """Store a token for the user; returns its metadata and its secret."""
        secret = secret or new_secret()
        document = {
            "_id": str(ObjectId()),
            "user_id": user_id,
            "hash": hash_secret(secret),
            "description": description,
            "create_time": now(),
        }
        await self._tokens.insert_one(document)
        return _token(document), secret

    async def authenticate(self, secret: str) -> user_pb2.User | None:
        """The user a token secret belongs to, or None; records the token's use."""
        token = await self._tokens.find_one_and_update(
            {"hash": hash_secret(secret)}, {"$set": {"last_used_time": now()}}
        )
        if token is None:
            return None
        user = await self._users.find_one({"_id": token["user_id"], **_LIVE})
        return None if user is None else _user(user)

    async def list_tokens(
        self, user_id: str, *, after: str | None, limit: int
    ) -> list[user_pb2.ApiToken]:
        query: dict[str, Any] = {"user_id": user_id}
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self._tokens.find(query).sort("_id", 1).limit(limit)
        return [_token(document) async for document in cursor]

    async def delete_token(self, user_id: str, token_id: str) -> None:
        result = await self._tokens.delete_one({"_id": token_id, "user_id": user_id})
        if result.deleted_count == 0:
            raise NotFound("TOKEN_NOT_FOUND", f"token '{token_id}' not found")


def _user(document: Document) -> user_pb2.User:
    return user_pb2.User(
        id=document["_id"],
        is_admin=document["is_admin"],
        create_time=timestamp(document["create_time"]),
    )


def _token(document: Document) -> user_pb2.ApiToken:
    token = user_pb2.ApiToken(
        id=document["_id"],
        user_id=document["user_id"],
        description=document["description"],
        create_time=timestamp(document["create_time"]),
    )
    if document.get("last_used_time") is not None:
        token.last_used_time.CopyFrom(timestamp(document["last_used_time"]))
    return token
