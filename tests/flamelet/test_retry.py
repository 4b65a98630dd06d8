"""The one retry policy: UNAVAILABLE is retried within a budget, nothing else is."""

from __future__ import annotations

import grpc
import pytest

from flame.flamelet.retry import RetryPolicy, retrying


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom")


class Flaky:
    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise rpc_error(self.codes.pop(0))
        return "ok"


async def test_unavailable_is_retried_until_the_call_succeeds() -> None:
    call = Flaky(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert await retrying(call, RetryPolicy(budget=10), "test") == "ok"
    assert call.calls == 3


async def test_other_errors_are_not_retried() -> None:
    call = Flaky(grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await retrying(call, RetryPolicy(budget=10), "test")
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call.calls == 1


async def test_unavailable_is_given_up_after_the_budget() -> None:
    call = Flaky(*[grpc.StatusCode.UNAVAILABLE] * 1000)
    with pytest.raises(grpc.aio.AioRpcError):
        await retrying(call, RetryPolicy(budget=0.5), "test")
    assert 1 <= call.calls < 1000
