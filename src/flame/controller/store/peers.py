"""Data-plane endpoints of tasks for the p2p backend: the discovery the original
ran as a separate metaserver, kept in the control plane's database."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from flame.agent.v1 import agent_pb2
from flame.controller.store.documents import Document, now

__all__ = ["PeerStore"]


class PeerStore:
    """Endpoints by (job, channel, group, role)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._peers = db["peers"]

    async def ensure_indexes(self) -> None:
        await self._peers.create_index(
            [("job_id", 1), ("channel", 1), ("group", 1), ("role", 1), ("task_id", 1)], unique=True
        )

    async def register(self, job_id: str, endpoint: agent_pb2.PeerEndpoint) -> None:
        key = {
            "job_id": job_id,
            "channel": endpoint.channel,
            "group": endpoint.group,
            "role": endpoint.role,
            "task_id": endpoint.task_id,
        }
        await self._peers.update_one(
            key, {"$set": {"address": endpoint.address, "update_time": now()}}, upsert=True
        )

    async def list_peers(
        self, job_id: str, channel: str, group: str, role: str
    ) -> list[agent_pb2.PeerEndpoint]:
        query = {"job_id": job_id, "channel": channel, "group": group, "role": role}
        cursor = self._peers.find(query).sort("task_id", 1)
        return [
            agent_pb2.PeerEndpoint(
                task_id=document["task_id"],
                role=document["role"],
                channel=document["channel"],
                group=document["group"],
                address=document["address"],
            )
            async for document in cursor
        ]

    async def delete_job(self, job_id: str) -> None:
        await self._peers.delete_many({"job_id": job_id})
