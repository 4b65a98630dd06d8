"""DesignService: designs, schema revisions and code revisions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from flame.controller.caller import caller_of
from flame.controller.masks import mask_paths
from flame.controller.pagination import list_page
from flame.controller.store.designs import DesignStore
from flame.controller.store.jobs import JobStore
from flame.controller.validation import (
    CODE_TOO_LARGE,
    inspect_code_bundle,
    validate_identifier,
    validate_schema,
)
from flame.design.v1 import code_pb2, design_service_pb2_grpc
from flame.design.v1 import design_service_pb2 as pb
from flame.rpc.errors import FailedPrecondition, FieldViolation, InvalidArgument

__all__ = ["DesignServicer"]

Context = Any
_MUTABLE = ("name", "description")


class DesignServicer(design_service_pb2_grpc.DesignServiceServicer):
    """Designs of the calling user."""

    def __init__(self, designs: DesignStore, jobs: JobStore, *, max_code_bytes: int) -> None:
        self._designs = designs
        self._jobs = jobs
        self._max_code_bytes = max_code_bytes

    async def CreateDesign(
        self, request: pb.CreateDesignRequest, context: Context
    ) -> pb.CreateDesignResponse:
        caller = caller_of(context)
        violation = validate_identifier(request.design.id, "design.id", "design id")
        if violation:
            raise InvalidArgument("DESIGN_INVALID", violation.description, violations=[violation])
        design = await self._designs.create(caller.user_id, request.design)
        return pb.CreateDesignResponse(design=design)

    async def GetDesign(
        self, request: pb.GetDesignRequest, context: Context
    ) -> pb.GetDesignResponse:
        caller = caller_of(context)
        design = await self._designs.get(caller.user_id, request.design_id)
        response = pb.GetDesignResponse(design=design)
        if design.latest_schema_revision:
            response.schema.CopyFrom(await self._designs.get_schema(caller.user_id, design.id))
        return response

    async def ListDesigns(
        self, request: pb.ListDesignsRequest, context: Context
    ) -> pb.ListDesignsResponse:
        caller = caller_of(context)
        page, token = await list_page(
            request,
            ["designs", caller.user_id],
            lambda after, count: self._designs.list_designs(
                caller.user_id, after=after, limit=count
            ),
            lambda design: design.id,
        )
        return pb.ListDesignsResponse(designs=page, next_page_token=token)

    async def UpdateDesign(
        self, request: pb.UpdateDesignRequest, context: Context
    ) -> pb.UpdateDesignResponse:
        caller = caller_of(context)
        paths = mask_paths(request.update_mask, _MUTABLE)
        fields = {path: getattr(request.design, path) for path in paths}
        design = await self._designs.update(caller.user_id, request.design.id, fields)
        return pb.UpdateDesignResponse(design=design)

    async def DeleteDesign(
        self, request: pb.DeleteDesignRequest, context: Context
    ) -> pb.DeleteDesignResponse:
        caller = caller_of(context)
        await self._designs.get(caller.user_id, request.design_id)
        users = await self._jobs.count_for_design(caller.user_id, request.design_id)
        if users and not request.force:
            raise FailedPrecondition(
                "DESIGN_IN_USE",
                f"design '{request.design_id}' is used by {users} job(s); delete them or force",
                metadata={"design": request.design_id, "jobs": str(users)},
            )
        await self._designs.delete(caller.user_id, request.design_id)
        return pb.DeleteDesignResponse()

    async def CreateSchema(
        self, request: pb.CreateSchemaRequest, context: Context
    ) -> pb.CreateSchemaResponse:
        caller = caller_of(context)
        await self._designs.get(caller.user_id, request.design_id)
        validate_schema(request.schema)
        schema = await self._designs.add_schema(caller.user_id, request.design_id, request.schema)
        return pb.CreateSchemaResponse(schema=schema)

    async def GetSchema(
        self, request: pb.GetSchemaRequest, context: Context
    ) -> pb.GetSchemaResponse:
        caller = caller_of(context)
        await self._designs.get(caller.user_id, request.design_id)
        schema = await self._designs.get_schema(caller.user_id, request.design_id, request.revision)
        return pb.GetSchemaResponse(schema=schema)

    async def ListSchemas(
        self, request: pb.ListSchemasRequest, context: Context
    ) -> pb.ListSchemasResponse:
        caller = caller_of(context)
        page, token = await list_page(
            request,
            ["schemas", caller.user_id, request.design_id],
            lambda before, count: self._designs.list_schemas(
                caller.user_id, request.design_id, before=before, limit=count
            ),
            lambda schema: schema.revision,
        )
        return pb.ListSchemasResponse(schemas=page, next_page_token=token)

    async def DeleteSchema(
        self, request: pb.DeleteSchemaRequest, context: Context
    ) -> pb.DeleteSchemaResponse:
        caller = caller_of(context)
        await self._designs.get(caller.user_id, request.design_id)
        await self._designs.delete_schemas(caller.user_id, request.design_id)
        return pb.DeleteSchemaResponse()

    async def UploadCode(
        self, request_iterator: AsyncIterator[pb.UploadCodeRequest], context: Context
    ) -> pb.UploadCodeResponse:
        caller = caller_of(context)
        metadata, data = await self._receive_upload(request_iterator)
        await self._designs.get(caller.user_id, metadata.design_id)
        bundle = inspect_code_bundle(data, max_bytes=self._max_code_bytes)
        info = code_pb2.CodeRevision(
            file_name=metadata.file_name,
            size_bytes=bundle.size_bytes,
            sha256=bundle.sha256,
            roles=list(bundle.roles),
        )
        code = await self._designs.add_code(caller.user_id, metadata.design_id, info, data)
        return pb.UploadCodeResponse(code=code)

    async def _receive_upload(
        self, request_iterator: AsyncIterator[pb.UploadCodeRequest]
    ) -> tuple[pb.UploadCodeMetadata, bytes]:
        metadata: pb.UploadCodeMetadata | None = None
        data = bytearray()
        async for message in request_iterator:
            if message.HasField("metadata"):
                if metadata is not None:
                    raise _upload_error("metadata", "sent twice")
                metadata = message.metadata
                continue
            if metadata is None:
                raise _upload_error("metadata", "must be the first message of the stream")
            data += message.chunk
            if len(data) > self._max_code_bytes:
                # Stop reading at once: the client may be streaming something huge.
                raise _too_large(self._max_code_bytes)
        if metadata is None:
            raise _upload_error("metadata", "missing")
        return metadata, bytes(data)

    async def DownloadCode(
        self, request: pb.DownloadCodeRequest, context: Context
    ) -> AsyncIterator[pb.DownloadCodeResponse]:
        caller = caller_of(context)
        await self._designs.get(caller.user_id, request.design_id)
        info, blob_id = await self._designs.get_code(
            caller.user_id, request.design_id, request.revision
        )
        yield pb.DownloadCodeResponse(code=info)
        async for chunk in self._designs.stream_code(blob_id):
            yield pb.DownloadCodeResponse(chunk=chunk)

    async def ListCodeRevisions(
        self, request: pb.ListCodeRevisionsRequest, context: Context
    ) -> pb.ListCodeRevisionsResponse:
        caller = caller_of(context)
        page, token = await list_page(
            request,
            ["code", caller.user_id, request.design_id],
            lambda before, count: self._designs.list_code(
                caller.user_id, request.design_id, before=before, limit=count
            ),
            lambda revision: revision.revision,
        )
        return pb.ListCodeRevisionsResponse(revisions=page, next_page_token=token)

    async def DeleteCode(
        self, request: pb.DeleteCodeRequest, context: Context
    ) -> pb.DeleteCodeResponse:
        caller = caller_of(context)
        await self._designs.get(caller.user_id, request.design_id)
        await self._designs.delete_code(caller.user_id, request.design_id)
        return pb.DeleteCodeResponse()


def _too_large(limit: int) -> InvalidArgument:
    # The same details as the bundle inspection gives for an oversized bundle.
    return InvalidArgument(
        CODE_TOO_LARGE,
        f"the code bundle exceeds the limit of {limit} bytes",
        metadata={"limit_bytes": str(limit)},
        violations=[FieldViolation("code", f"larger than {limit} bytes")],
    )


def _upload_error(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        "CODE_INVALID",
        f"upload {field} {problem}",
        violations=[FieldViolation(field, problem)],
    )
