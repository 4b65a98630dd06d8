"""Designs with their schema revisions and code revisions.

Code bundles can exceed MongoDB's 16 MiB document limit, so their bytes live in
GridFS (bucket `code`) and the revision documents point at them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gridfs import AsyncGridFSBucket
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from flame.controller.store.documents import (
    Document,
    from_document,
    now,
    timestamp,
    to_document,
)
from flame.design.v1 import code_pb2, design_pb2
from flame.rpc.errors import AlreadyExists, NotFound

__all__ = ["DesignStore"]

_DOWNLOAD_CHUNK_BYTES = 1024 * 1024


class DesignStore:
    """Designs, schema revisions and code revisions, scoped by owner."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._designs = db["designs"]
        self._schemas = db["schemas"]
        self._code = db["code_revisions"]
        self._blobs = AsyncGridFSBucket(db, bucket_name="code")

    async def ensure_indexes(self) -> None:
        await self._designs.create_index([("owner", 1), ("id", 1)], unique=True)
        await self._schemas.create_index(
            [("owner", 1), ("design_id", 1), ("revision", 1)], unique=True
        )
        await self._code.create_index(
            [("owner", 1), ("design_id", 1), ("revision", 1)], unique=True
        )

    # Designs.

    async def create(self, owner: str, design: design_pb2.Design) -> design_pb2.Design:
        moment = now()
        document = {
            "owner": owner,
            "id": design.id,
            "name": design.name,
            "description": design.description,
            "create_time": moment,
            "update_time": moment,
        }
        try:
            await self._designs.insert_one(document)
        except DuplicateKeyError:
            raise AlreadyExists(
                "DESIGN_ALREADY_EXISTS",
                f"design '{design.id}' already exists",
                metadata={"design": design.id},
            ) from None
        return await self.get(owner, design.id)

    async def get(self, owner: str, design_id: str) -> design_pb2.Design:
        document = await self._designs.find_one({"owner": owner, "id": design_id})
        if document is None:
            raise _design_not_found(design_id)
        return await self._design(document)

    async def list_designs(
        self, owner: str, *, after: str | None, limit: int
    ) -> list[design_pb2.Design]:
        query: dict[str, Any] = {"owner": owner}
        if after is not None:
            query["id"] = {"$gt": after}
        cursor = self._designs.find(query).sort("id", 1).limit(limit)
        return [await self._design(document) async for document in cursor]

    async def update(self, owner: str, design_id: str, fields: dict[str, str]) -> design_pb2.Design:
        result = await self._designs.update_one(
            {"owner": owner, "id": design_id}, {"$set": {**fields, "update_time": now()}}
        )
        if result.matched_count == 0:
            raise _design_not_found(design_id)
        return await self.get(owner, design_id)

    async def delete(self, owner: str, design_id: str) -> None:
        result = await self._designs.delete_one({"owner": owner, "id": design_id})
        if result.deleted_count == 0:
            raise _design_not_found(design_id)
        await self.delete_schemas(owner, design_id)
        await self.delete_code(owner, design_id)

    async def _design(self, document: Document) -> design_pb2.Design:
        owner, design_id = document["owner"], document["id"]
        return design_pb2.Design(
            id=design_id,
            name=document["name"],
            description=document["description"],
            owner=owner,
            latest_schema_revision=await _latest_revision(self._schemas, owner, design_id),
            latest_code_revision=await _latest_revision(self._code, owner, design_id),
            create_time=timestamp(document["create_time"]),
            update_time=timestamp(document["update_time"]),
        )

    # Schema revisions.

    async def add_schema(
        self, owner: str, design_id: str, schema: design_pb2.Schema
    ) -> design_pb2.Schema:
        stored = design_pb2.Schema()
        stored.CopyFrom(schema)
        stored.revision = await self._next_revision(owner, design_id, "schema_revisions")
        stored.create_time.CopyFrom(timestamp(now()))
        await self._schemas.insert_one(
            {
                "owner": owner,
                "design_id": design_id,
                "revision": stored.revision,
                "resource": to_document(stored),
            }
        )
        return stored

    async def _next_revision(self, owner: str, design_id: str, counter: str) -> int:
        """Allocate the design's next revision number of a kind. Numbers are never
        reused, even after deletions, so a job's recorded revision always means
        the content it was created with."""
        document = await self._designs.find_one_and_update(
            {"owner": owner, "id": design_id},
            {"$inc": {counter: 1}, "$set": {"update_time": now()}},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            raise _design_not_found(design_id)
        return int(document[counter])

    async def get_schema(self, owner: str, design_id: str, revision: int = 0) -> design_pb2.Schema:
        query: dict[str, Any] = {"owner": owner, "design_id": design_id}
        if revision:
            query["revision"] = revision
        document = await self._schemas.find_one(query, sort=[("revision", DESCENDING)])
        if document is None:
            raise NotFound(
                "SCHEMA_NOT_FOUND",
                f"design '{design_id}' has no schema"
                + (f" revision {revision}" if revision else ""),
                metadata={"design": design_id, "revision": str(revision)},
            )
        return from_document(document["resource"], design_pb2.Schema)

    async def list_schemas(
        self, owner: str, design_id: str, *, before: int | None, limit: int
    ) -> list[design_pb2.Schema]:
        await self.get(owner, design_id)
        query: dict[str, Any] = {"owner": owner, "design_id": design_id}
        if before is not None:
            query["revision"] = {"$lt": before}
        cursor = self._schemas.find(query).sort("revision", DESCENDING).limit(limit)
        return [from_document(document["resource"], design_pb2.Schema) async for document in cursor]

    async def delete_schemas(self, owner: str, design_id: str) -> int:
        result = await self._schemas.delete_many({"owner": owner, "design_id": design_id})
        return result.deleted_count

    # Code revisions.

    async def add_code(
        self, owner: str, design_id: str, info: code_pb2.CodeRevision, data: bytes
    ) -> code_pb2.CodeRevision:
        stored = code_pb2.CodeRevision()
        stored.CopyFrom(info)
        stored.revision = await self._next_revision(owner, design_id, "code_revisions")
        stored.create_time.CopyFrom(timestamp(now()))
        blob_id = await self._blobs.upload_from_stream(info.file_name or "code.zip", data)
        await self._code.insert_one(
            {
                "owner": owner,
                "design_id": design_id,
                "revision": stored.revision,
                "blob_id": blob_id,
                "resource": to_document(stored),
            }
        )
        return stored

    async def get_code(
        self, owner: str, design_id: str, revision: int = 0
    ) -> tuple[code_pb2.CodeRevision, Any]:
        """The revision's metadata and the GridFS id of its bytes."""
        query: dict[str, Any] = {"owner": owner, "design_id": design_id}
        if revision:
            query["revision"] = revision
        document = await self._code.find_one(query, sort=[("revision", DESCENDING)])
        if document is None:
            raise NotFound(
                "CODE_NOT_FOUND",
                f"design '{design_id}' has no code" + (f" revision {revision}" if revision else ""),
                metadata={"design": design_id, "revision": str(revision)},
            )
        return from_document(document["resource"], code_pb2.CodeRevision), document["blob_id"]

    async def read_code(self, blob_id: Any) -> bytes:
        stream = await self._blobs.open_download_stream(blob_id)
        return await stream.read()

    async def stream_code(self, blob_id: Any) -> AsyncIterator[bytes]:
        stream = await self._blobs.open_download_stream(blob_id)
        while chunk := await stream.read(_DOWNLOAD_CHUNK_BYTES):
            yield chunk

    async def list_code(
        self, owner: str, design_id: str, *, before: int | None, limit: int
    ) -> list[code_pb2.CodeRevision]:
        await self.get(owner, design_id)
        query: dict[str, Any] = {"owner": owner, "design_id": design_id}
        if before is not None:
            query["revision"] = {"$lt": before}
        cursor = self._code.find(query).sort("revision", DESCENDING).limit(limit)
        return [
            from_document(document["resource"], code_pb2.CodeRevision) async for document in cursor
        ]

    async def delete_code(self, owner: str, design_id: str) -> int:
        query = {"owner": owner, "design_id": design_id}
        blob_ids = [document["blob_id"] async for document in self._code.find(query)]
        result = await self._code.delete_many(query)
        for blob_id in blob_ids:
            await self._blobs.delete(blob_id)
        return result.deleted_count


async def _latest_revision(collection: Any, owner: str, design_id: str) -> int:
    document = await collection.find_one(
        {"owner": owner, "design_id": design_id},
        sort=[("revision", DESCENDING)],
        projection={"revision": 1},
    )
    return 0 if document is None else int(document["revision"])


def _design_not_found(design_id: str) -> NotFound:
    return NotFound(
        "DESIGN_NOT_FOUND", f"design '{design_id}' not found", metadata={"design": design_id}
    )
