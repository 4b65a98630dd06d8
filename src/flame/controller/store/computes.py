"""Computes: where tasks run. A compute's api key is stored hashed."""

from __future__ import annotations

import hmac
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from flame.compute.v1 import compute_pb2
from flame.controller.store.documents import Document, from_document, now, timestamp, to_document
from flame.controller.store.users import hash_secret
from flame.rpc.errors import AlreadyExists, NotFound

__all__ = ["ComputeStore"]


class ComputeStore:
    """Registered computes."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._computes = db["computes"]

    async def register(
        self, compute: compute_pb2.Compute, api_key: str
    ) -> tuple[compute_pb2.Compute, bool]:
        """Register a compute, or confirm an existing one with the same key."""
        existing = await self._computes.find_one({"_id": compute.id})
        if existing is not None:
            if not hmac.compare_digest(existing["key_hash"], hash_secret(api_key)):
                raise AlreadyExists(
                    "COMPUTE_ALREADY_EXISTS",
                    f"compute '{compute.id}' is registered with another key",
                    metadata={"compute": compute.id},
                )
            return from_document(existing["resource"], compute_pb2.Compute), False
        stored = compute_pb2.Compute()
        stored.CopyFrom(compute)
        stored.state = compute_pb2.Compute.STATE_UP
        moment = timestamp(now())
        stored.register_time.CopyFrom(moment)
        stored.update_time.CopyFrom(moment)
        document = {
            "_id": compute.id,
            "region": compute.region,
            "key_hash": hash_secret(api_key),
            "resource": to_document(stored),
        }
        await self._computes.insert_one(document)
        return stored, True

    async def get(self, compute_id: str) -> compute_pb2.Compute:
        document = await self._computes.find_one({"_id": compute_id})
        if document is None:
            raise NotFound(
                "COMPUTE_NOT_FOUND",
                f"compute '{compute_id}' not found",
                metadata={"compute": compute_id},
            )
        return from_document(document["resource"], compute_pb2.Compute)

    async def list_computes(self, *, after: str | None, limit: int) -> list[compute_pb2.Compute]:
        query: dict[str, Any] = {} if after is None else {"_id": {"$gt": after}}
        cursor = self._computes.find(query).sort("_id", 1).limit(limit)
        return [
            from_document(document["resource"], compute_pb2.Compute) async for document in cursor
        ]

    async def all(self) -> list[compute_pb2.Compute]:
        return await self.list_computes(after=None, limit=0)

    async def delete(self, compute_id: str) -> None:
        result = await self._computes.delete_one({"_id": compute_id})
        if result.deleted_count == 0:
            raise NotFound("COMPUTE_NOT_FOUND", f"compute '{compute_id}' not found")

    async def check_key(self, compute_id: str, api_key: str) -> bool:
        document = await self._computes.find_one({"_id": compute_id})
        return document is not None and hmac.compare_digest(
            document["key_hash"], hash_secret(api_key)
        )
