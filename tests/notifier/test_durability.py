"""The real `flame-notifier` process: killed with SIGKILL, restarted, nothing is lost."""

from __future__ import annotations

import pytest

from flame.notify.v1 import notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from tests.notifier.conftest import Subscription, publish
from tests.support.processes import start_server_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


def notifier_args(mongo_uri: str, database: str) -> list[str]:
    return ["flame-notifier", "--plaintext", "--mongo-uri", mongo_uri, "--database", database]


async def test_unacked_events_survive_a_killed_notifier(mongo_uri: str, database_name: str) -> None:
    args = notifier_args(mongo_uri, database_name)
    with start_server_process(args) as first:
        async with open_channel(first.address, tls=None) as channel:
            stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
            for job in ("j1", "j2", "j3"):
                await publish(stub, ["task/a", "compute/c"], job_id=job)
            ack = notify_service_pb2.AckEventsRequest(subscriber="task/a", cursor=1)
            await stub.AckEvents(ack, timeout=5)
        first.process.kill()
        first.process.wait(10)

    with start_server_process(args) as second:
        async with open_channel(second.address, tls=None) as channel:
            stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
            async with Subscription(stub, "task/a") as subscription:
                events = [await subscription.next_event() for _ in range(2)]
                assert [(e.cursor, e.job_id) for e in events] == [(2, "j2"), (3, "j3")]
                # Cursors go on from where the killed process left them.
                await publish(stub, ["task/a"], job_id="j4")
                assert (await subscription.next_event()).cursor == 4
            async with Subscription(stub, "compute/c") as subscription:
                assert await subscription.cursors(3) == [1, 2, 3]
