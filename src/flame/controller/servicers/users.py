"""UserService and the internal AuthService."""

from __future__ import annotations

from typing import Any

from flame.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flame.controller.caller import caller_of, require_admin
from flame.controller.pagination import list_page
from flame.controller.store.users import UserStore
from flame.controller.validation.names import validate_identifier
from flame.rpc.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from flame.user.v1 import user_service_pb2 as pb
from flame.user.v1 import user_service_pb2_grpc

__all__ = ["AuthServicer", "UserServicer"]

Context = Any


class UserServicer(user_service_pb2_grpc.UserServiceServicer):
    """Users (admin only, except reading oneself) and one's own API tokens."""

    def __init__(self, store: UserStore) -> None:
        self._store = store

    async def CreateUser(
        self, request: pb.CreateUserRequest, context: Context
    ) -> pb.CreateUserResponse:
        require_admin(context)
        violation = validate_identifier(request.user.id, "user.id", "user id")
        if violation:
            raise InvalidArgument("USER_INVALID", violation.description, violations=[violation])
        user = await self._store.create_user(request.user.id, is_admin=request.user.is_admin)
        _, secret = await self._store.create_token(user.id, "created with the user")
        return pb.CreateUserResponse(user=user, token=secret)

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> pb.GetUserResponse:
        caller = caller_of(context)
        user_id = request.user_id or caller.user_id
        if user_id != caller.user_id and not caller.is_admin:
            raise PermissionDenied("PERMISSION_DENIED", "only admins read other users")
        return pb.GetUserResponse(user=await self._store.get_user(user_id))

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: Context
    ) -> pb.ListUsersResponse:
        require_admin(context)
        page, token = await list_page(
            request,
            "users",
            lambda after, count: self._store.list_users(after=after, limit=count),
            lambda user: user.id,
        )
        return pb.ListUsersResponse(users=page, next_page_token=token)

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: Context
    ) -> pb.DeleteUserResponse:
        caller = require_admin(context)
        if request.user_id == caller.user_id:
            raise FailedPrecondition("USER_IS_CALLER", "an admin cannot delete itself")
        await self._store.delete_user(request.user_id)
        return pb.DeleteUserResponse()

    async def CreateApiToken(
        self, request: pb.CreateApiTokenRequest, context: Context
    ) -> pb.CreateApiTokenResponse:
        caller = caller_of(context)
        token, secret = await self._store.create_token(caller.user_id, request.description)
        return pb.CreateApiTokenResponse(api_token=token, token=secret)

    async def ListApiTokens(
        self, request: pb.ListApiTokensRequest, context: Context
    ) -> pb.ListApiTokensResponse:
        caller = caller_of(context)
        page, token = await list_page(
            request,
            ["tokens", caller.user_id],
            lambda after, count: self._store.list_tokens(caller.user_id, after=after, limit=count),
            lambda item: item.id,
        )
        return pb.ListApiTokensResponse(api_tokens=page, next_page_token=token)

    async def DeleteApiToken(
        self, request: pb.DeleteApiTokenRequest, context: Context
    ) -> pb.DeleteApiTokenResponse:
        caller = caller_of(context)
        await self._store.delete_token(caller.user_id, request.api_token_id)
        return pb.DeleteApiTokenResponse()


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Resolves bearer tokens for the apiserver."""

    def __init__(self, store: UserStore) -> None:
        self._store = store

    async def AuthenticateToken(
        self, request: auth_service_pb2.AuthenticateTokenRequest, context: Context
    ) -> auth_service_pb2.AuthenticateTokenResponse:
        user = await self._store.authenticate(request.token) if request.token else None
        if user is None:
            raise Unauthenticated("TOKEN_INVALID", "the API token is not valid")
        return auth_service_pb2.AuthenticateTokenResponse(user_id=user.id, is_admin=user.is_admin)
