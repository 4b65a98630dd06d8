"""DatasetService."""

from __future__ import annotations

from typing import Any

from flame.controller.caller import caller_of
from flame.controller.masks import mask_paths
from flame.controller.pagination import list_page
from flame.controller.store.computes import ComputeStore
from flame.controller.store.datasets import DatasetStore
from flame.controller.store.jobs import JobStore
from flame.controller.validation import resolve_realm, validate_dataset
from flame.data.v1 import dataset_pb2, dataset_service_pb2_grpc
from flame.data.v1 import dataset_service_pb2 as pb
from flame.rpc.errors import FailedPrecondition, NotFound

__all__ = ["DatasetServicer"]

Context = Any
_MUTABLE = ("name", "description", "url", "data_format", "realm", "is_public")


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    """Datasets of the calling user, and public ones for reading."""

    def __init__(self, datasets: DatasetStore, computes: ComputeStore, jobs: JobStore) -> None:
        self._jobs = jobs
        self._datasets = datasets
        self._computes = computes

    async def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: Context
    ) -> pb.CreateDatasetResponse:
        caller = caller_of(context)
        dataset = await self._resolved(request.dataset)
        return pb.CreateDatasetResponse(
            dataset=await self._datasets.create(caller.user_id, dataset)
        )

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        caller = caller_of(context)
        return pb.GetDatasetResponse(
            dataset=await self._datasets.get(caller.user_id, request.dataset_id)
        )

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        caller = caller_of(context)
        page, token = await list_page(
            request,
            ["datasets", caller.user_id, request.include_public],
            lambda after, count: self._datasets.list_datasets(
                caller.user_id, include_public=request.include_public, after=after, limit=count
            ),
            lambda dataset: dataset.id,
        )
        return pb.ListDatasetsResponse(datasets=page, next_page_token=token)

    async def UpdateDataset(
        self, request: pb.UpdateDatasetRequest, context: Context
    ) -> pb.UpdateDatasetResponse:
        caller = caller_of(context)
        paths = mask_paths(request.update_mask, _MUTABLE)
        current = await self._own_dataset(caller.user_id, request.dataset.id)
        updated = dataset_pb2.Dataset()
        updated.CopyFrom(current)
        for path in paths:
            setattr(updated, path, getattr(request.dataset, path))
        if updated.realm == current.realm:
            # Keep the stored resolution unless the realm itself changes: a dataset
            # read and written back carries its resolved realm, which is no region.
            return pb.UpdateDatasetResponse(
                dataset=await self._datasets.replace(caller.user_id, _validated(updated))
            )
        resolved = await self._resolved(updated)
        return pb.UpdateDatasetResponse(
            dataset=await self._datasets.replace(caller.user_id, resolved)
        )

    async def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: Context
    ) -> pb.DeleteDatasetResponse:
        caller = caller_of(context)
        await self._own_dataset(caller.user_id, request.dataset_id)
        users = await self._jobs.count_using_dataset(request.dataset_id)
        if users:
            raise FailedPrecondition(
                "DATASET_IN_USE",
                f"dataset '{request.dataset_id}' is read by {users} job(s); delete them first",
                metadata={"dataset": request.dataset_id, "jobs": str(users)},
            )
        await self._datasets.delete(caller.user_id, request.dataset_id)
        return pb.DeleteDatasetResponse()

    async def _own_dataset(self, owner: str, dataset_id: str) -> dataset_pb2.Dataset:
        """One of the caller's own datasets. Others' public datasets are readable,
        never writable: for writes they answer as if absent."""
        dataset = await self._datasets.get(owner, dataset_id)
        if dataset.owner != owner:
            raise NotFound(
                "DATASET_NOT_FOUND",
                f"dataset '{dataset_id}' not found",
                metadata={"dataset": dataset_id},
            )
        return dataset

    async def _resolved(self, dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
        """The dataset validated, with its realm resolved to a compute."""
        resolved = _validated(dataset)
        realm, compute_id = resolve_realm(
            dataset.realm, dataset.is_public, await self._computes.all()
        )
        resolved.realm, resolved.compute_id = realm, compute_id
        return resolved


def _validated(dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
    validate_dataset(dataset)
    copy = dataset_pb2.Dataset()
    copy.CopyFrom(dataset)
    return copy
