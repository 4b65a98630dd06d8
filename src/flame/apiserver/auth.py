"""Resolving bearer tokens to users, with a short-lived cache.

Tokens are resolved by the controller's AuthService. A resolved token is cached
for a few seconds (keyed by its SHA-256, never the secret itself) so that a
burst of calls costs one lookup; a revoked token stops working within the TTL.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import grpc

from flame.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flame.rpc.errors import Unauthenticated, Unavailable

__all__ = ["Identity", "TokenResolver"]

_MAX_CACHED = 10_000


@dataclass(frozen=True)
class Identity:
    """Who a call comes from."""

    user_id: str
    is_admin: bool


class TokenResolver:
    """Turns a bearer token into an Identity, asking the controller on a cache miss."""

    def __init__(
        self,
        stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
        *,
        internal_metadata: tuple[tuple[str, str], ...],
        ttl_seconds: float = 10.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._stub = stub
        self._internal_metadata = internal_metadata
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._cache: dict[str, tuple[Identity, float]] = {}

    async def resolve(self, token: str) -> Identity:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached and cached[1] > now:
            return cached[0]
        identity = await self._ask_controller(token)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (identity, now + self._ttl)
        return identity

    async def _ask_controller(self, token: str) -> Identity:
        try:
            response = await self._stub.AuthenticateToken(
                auth_service_pb2.AuthenticateTokenRequest(token=token),
                metadata=self._internal_metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated("TOKEN_INVALID", "the API token is not valid") from None
            raise Unavailable(
                "CONTROLLER_UNAVAILABLE", f"cannot reach the controller: {error.details()}"
            ) from None
        return Identity(response.user_id, response.is_admin)
