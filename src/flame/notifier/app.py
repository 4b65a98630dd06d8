"""Wiring of the notifier: the database, the store, the hub and the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from flame.notifier.hub import EventHub
from flame.notifier.servicer import NotifyServicer
from flame.notifier.store import EventStore
from flame.notifier.wake import Siblings
from flame.notify.v1 import notify_service_pb2
from flame.rpc.server import RunningServer, ServerOptions, Service, bind_serialized, start_server

__all__ = ["Notifier", "notifier_services", "open_database", "start_notifier"]

Document = dict[str, Any]

# Every database operation, a whole publish transaction included, ends within this.
_DATABASE_TIMEOUT_MS = 10_000


async def open_database(
    uri: str, name: str
) -> tuple[AsyncMongoClient[Document], AsyncDatabase[Document]]:
    """Connect to MongoDB, check it answers, and bound every operation by a timeout."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=_DATABASE_TIMEOUT_MS, timeoutMS=_DATABASE_TIMEOUT_MS
    )
    await client.admin.command("ping")
    return client, client[name]


def notifier_services(store: EventStore, hub: EventHub) -> list[Service]:
    """The services a notifier serves."""
    descriptor = notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"]
    # Events are serialized by the servicer (`flame.notifier.encoding`).
    serialized = {"PublishEvent", "SubscribeEvents"}
    return [bind_serialized(descriptor, NotifyServicer(store, hub), responses=serialized)]


@dataclass
class Notifier:
    """A running notifier: its server and the hub that feeds its streams."""

    running: RunningServer
    hub: EventHub
    siblings: Siblings | None = None

    @property
    def address(self) -> str:
        """Where the server listens."""
        return self.running.address

    async def stop(self) -> None:
        """End the open streams, then stop the server.

        The streams end first: left open they would hold the server for its whole
        grace period.
        """
        await self.hub.close()
        await self.running.stop()
        if self.siblings is not None:
            self.siblings.close()


async def start_notifier(
    db: AsyncDatabase[Document],
    options: ServerOptions,
    *,
    poll_seconds: float = 0.2,
    siblings: Siblings | None = None,
) -> Notifier:
    """Prepare the store in `db` and serve NotifyService with `options`.

    `poll_seconds` is how often streams look for events published by other processes.
    `siblings`, for a worker of several serving one port, wakes the others on each
    publication and this one on theirs.
    """
    store = EventStore(db)
    await store.prepare()
    hub = EventHub(store, poll_seconds=poll_seconds, on_stored=siblings.tell if siblings else None)
    await hub.start()
    if siblings is not None:
        siblings.listen(hub.wake)
    try:
        running = await start_server(notifier_services(store, hub), options)
    except BaseException:
        await hub.close()
        if siblings is not None:
            siblings.close()
        raise
    return Notifier(running, hub, siblings)
