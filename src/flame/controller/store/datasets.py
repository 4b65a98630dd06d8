"""Datasets: private to their owner unless public."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from flame.controller.store.documents import Document, from_document, now, timestamp, to_document
from flame.data.v1 import dataset_pb2
from flame.rpc.errors import AlreadyExists, NotFound

__all__ = ["DatasetStore"]


class DatasetStore:
    """Datasets; reads see the caller's own datasets and everyone's public ones."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._datasets = db["datasets"]

    async def ensure_indexes(self) -> None:
        await self._datasets.create_index([("owner", 1), ("url", 1)], unique=True)
        await self._datasets.create_index([("is_public", 1), ("_id", 1)])

    async def create(self, owner: str, dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
        stored = dataset_pb2.Dataset()
        stored.CopyFrom(dataset)
        object_id = ObjectId()
        moment = now()
        stored.id, stored.owner = str(object_id), owner
        stored.create_time.CopyFrom(timestamp(moment))
        stored.update_time.CopyFrom(timestamp(moment))
        try:
            await self._datasets.insert_one(
                {"_id": object_id, **_indexed(stored), "resource": to_document(stored)}
            )
        except DuplicateKeyError:
            raise _duplicate_url(dataset.url) from None
        return stored

    async def get(self, caller: str, dataset_id: str) -> dataset_pb2.Dataset:
        """A dataset the caller may read: its own, or a public one."""
        document = await self._datasets.find_one(_visible(caller, {"_id": _object_id(dataset_id)}))
        if document is None:
            raise _not_found(dataset_id)
        return from_document(document["resource"], dataset_pb2.Dataset)

    async def find_visible(self, caller: str, ids: list[str]) -> dict[str, dataset_pb2.Dataset]:
        """The datasets among `ids` that the caller may use, by id."""
        object_ids = [_object_id(item) for item in ids if ObjectId.is_valid(item)]
        cursor = self._datasets.find(_visible(caller, {"_id": {"$in": object_ids}}))
        found = [
            from_document(document["resource"], dataset_pb2.Dataset) async for document in cursor
        ]
        return {dataset.id: dataset for dataset in found}

    async def list_datasets(
        self, caller: str, *, include_public: bool, after: str | None, limit: int
    ) -> list[dataset_pb2.Dataset]:
        query: dict[str, Any] = _visible(caller, {}) if include_public else {"owner": caller}
        if after is not None:
            query = {"$and": [query, {"_id": {"$gt": _object_id(after)}}]}
        cursor = self._datasets.find(query).sort("_id", 1).limit(limit)
        return [
            from_document(document["resource"], dataset_pb2.Dataset) async for document in cursor
        ]

    async def replace(self, owner: str, dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
        """Store new values for an existing dataset of `owner`."""
        stored = dataset_pb2.Dataset()
        stored.CopyFrom(dataset)
        stored.update_time.CopyFrom(timestamp(now()))
        try:
            result = await self._datasets.update_one(
                {"_id": _object_id(dataset.id), "owner": owner},
                {"$set": {**_indexed(stored), "resource": to_document(stored)}},
            )
        except DuplicateKeyError:
            raise _duplicate_url(dataset.url) from None
        if result.matched_count == 0:
            raise _not_found(dataset.id)
        return stored

    async def delete(self, owner: str, dataset_id: str) -> None:
        result = await self._datasets.delete_one({"_id": _object_id(dataset_id), "owner": owner})
        if result.deleted_count == 0:
            raise _not_found(dataset_id)


def _indexed(dataset: dataset_pb2.Dataset) -> Document:
    return {"owner": dataset.owner, "url": dataset.url, "is_public": dataset.is_public}


def _visible(caller: str, query: Document) -> Document:
    return {"$and": [query, {"$or": [{"owner": caller}, {"is_public": True}]}]}


def _object_id(dataset_id: str) -> ObjectId:
    try:
        return ObjectId(dataset_id)
    except (InvalidId, TypeError):
        raise _not_found(dataset_id) from None


def _not_found(dataset_id: str) -> NotFound:
    return NotFound(
        "DATASET_NOT_FOUND", f"dataset '{dataset_id}' not found", metadata={"dataset": dataset_id}
    )


def _duplicate_url(url: str) -> AlreadyExists:
    return AlreadyExists(
        "DATASET_ALREADY_EXISTS",
        f"a dataset with url '{url}' is already registered",
        metadata={"url": url},
    )
