"""Publishing job events to the notifier, for agents and deployers."""

from __future__ import annotations

from collections.abc import Sequence

from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc

__all__ = ["EventPublisher", "compute_subscriber", "task_subscriber"]

Event = event_pb2.Event


def task_subscriber(task_id: str) -> str:
    return f"task/{task_id}"


def compute_subscriber(compute_id: str) -> str:
    return f"compute/{compute_id}"


class EventPublisher:
    """Publishes events through a NotifyService stub; raises on failure so the
    caller retries the whole step later (the notifier stores what it accepted)."""

    def __init__(
        self, stub: notify_service_pb2_grpc.NotifyServiceAsyncStub, *, timeout_seconds: float = 10.0
    ) -> None:
        self._stub = stub
        self._timeout = timeout_seconds

    async def publish(
        self,
        subscribers: Sequence[str],
        event_type: event_pb2.Event.Type.ValueType,
        job_id: str,
        task_ids: Sequence[str] = (),
    ) -> None:
        if not subscribers:
            return
        request = notify_service_pb2.PublishEventRequest(
            subscribers=list(subscribers),
            event=Event(type=event_type, job_id=job_id, task_ids=list(task_ids)),
        )
        await self._stub.PublishEvent(request, timeout=self._timeout)
