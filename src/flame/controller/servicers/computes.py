"""ComputeService: registration and reads (the deployment calls come with job runs)."""

from __future__ import annotations

from typing import Any

from flame.compute.v1 import compute_service_pb2 as pb
from flame.compute.v1 import compute_service_pb2_grpc
from flame.controller.caller import caller_of, require_admin
from flame.controller.pagination import decode_token, next_page, page_size
from flame.controller.store.computes import ComputeStore
from flame.controller.validation import validate_identifier
from flame.rpc.errors import FieldViolation, InvalidArgument

__all__ = ["ComputeServicer"]

Context = Any


class ComputeServicer(compute_service_pb2_grpc.ComputeServiceServicer):
    """Computes: admins register and delete them; every user may read them."""

    def __init__(self, computes: ComputeStore) -> None:
        self._computes = computes

    async def RegisterCompute(
        self, request: pb.RegisterComputeRequest, context: Context
    ) -> pb.RegisterComputeResponse:
        require_admin(context)
        _validate_registration(request)
        compute, created = await self._computes.register(request.compute, request.api_key)
        return pb.RegisterComputeResponse(compute=compute, created=created)

    async def GetCompute(self, request: pb.GetComputeRequest, context: Context) -> pb.GetComputeResponse:
        caller_of(context)
        return pb.GetComputeResponse(compute=await self._computes.get(request.compute_id))

    async def ListComputes(
        self, request: pb.ListComputesRequest, context: Context
    ) -> pb.ListComputesResponse:
        caller_of(context)
        limit = page_size(request.page_size)
        after = decode_token(request.page_token, "computes")
        computes = await self._computes.list(after=after, limit=limit + 1)
        page, token = next_page(computes, limit, lambda compute: compute.id, "computes")
        return pb.ListComputesResponse(computes=page, next_page_token=token)

    async def DeleteCompute(
        self, request: pb.DeleteComputeRequest, context: Context
    ) -> pb.DeleteComputeResponse:
        require_admin(context)
        await self._computes.delete(request.compute_id)
        return pb.DeleteComputeResponse()


def _validate_registration(request: pb.RegisterComputeRequest) -> None:
    violations = []
    identifier = validate_identifier(request.compute.id, "compute.id", "compute id")
    if identifier:
        violations.append(identifier)
    if not request.compute.region:
        violations.append(FieldViolation("compute.region", "required, e.g. default/us"))
    if len(request.api_key) < 16:
        violations.append(FieldViolation("api_key", "required, at least 16 characters"))
    if violations:
        raise InvalidArgument("COMPUTE_INVALID", "the compute is not valid", violations=violations)
