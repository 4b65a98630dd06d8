"""Task keys: the secrets task agents authenticate with.

A key is derived, not stored: HMAC-SHA256 of (job, task, run) under a secret the
controller keeps in its database. Deriving lets every call for the same run of a
task give the same key, so a deployer that asks again (a redelivered event, a
restart) gets keys that still match the agents it already started; a new run of
the job (each StartJob draws a new run id) makes every older key useless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pymongo.asynchronous.database import AsyncDatabase

from flame.controller.store.documents import Document

__all__ = ["TaskKeys", "new_run_id"]

_SECRET_ID = "task-key-secret"


def new_run_id() -> str:
    """An identifier for one start of a job."""
    return secrets.token_hex(8)


class TaskKeys:
    """Derives and checks task keys."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    async def load(cls, db: AsyncDatabase[Document]) -> TaskKeys:
        """The keys of this deployment: the secret is made once, then shared by every
        controller on the database (and survives restarts)."""
        collection = db["secrets"]
        await collection.update_one(
            {"_id": _SECRET_ID},
            {"$setOnInsert": {"value": secrets.token_bytes(32)}},
            upsert=True,
        )
        document = await collection.find_one({"_id": _SECRET_ID})
        assert document is not None
        return cls(bytes(document["value"]))

    def key(self, job_id: str, task_id: str, run_id: str) -> str:
        digest = hmac.new(
            self._secret, f"{job_id}:{task_id}:{run_id}".encode(), hashlib.sha256
        ).digest()
        return "ftk_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def matches(self, job_id: str, task_id: str, run_id: str, presented: str) -> bool:
        return bool(run_id) and hmac.compare_digest(
            self.key(job_id, task_id, run_id).encode(), presented.encode()
        )
