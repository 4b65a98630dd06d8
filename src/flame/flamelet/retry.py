"""The flamelet's one retry policy for calls to the apiserver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from flame.notifier.client import backoff_delay

__all__ = ["RetryPolicy", "retrying"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

# Only a transient failure is worth another attempt: anything else (a rejected
# key, a task that does not exist) fails the same way every time.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class RetryPolicy:
    """Deadlines of calls to the apiserver.

    Attributes:
        call_timeout: Deadline of one attempt of a unary call, in seconds.
        stream_timeout: Deadline of one attempt of a streaming call, in seconds.
        budget: Time after which a call failing with UNAVAILABLE is given up, in
            seconds, counted from its first attempt.
    """

    call_timeout: float = 30.0
    stream_timeout: float = 120.0
    budget: float = 120.0


async def retrying(call: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str) -> T:
    """Await `call()`, again after a backoff with full jitter while it fails with UNAVAILABLE.

    Args:
        call: Makes one attempt; it sets its own deadline.
        policy: When to give up.
        what: Names the call in log lines.

    Returns:
        What the first successful attempt returned.

    Raises:
        grpc.aio.AioRpcError: The error of the last attempt, when it is not
            retryable or the next attempt would start after the budget.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + policy.budget
    failures = 0
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            delay = backoff_delay(failures)
            if error.code() not in _RETRYABLE or loop.time() + delay > give_up_at:
                raise
            _log.warning(
                "call failed, retrying",
                extra={"call": what, "code": error.code().name, "retry_in": round(delay, 2)},
            )
        failures += 1
        await asyncio.sleep(delay)
