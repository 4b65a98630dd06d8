"""The MQTT topic scheme of the data plane, one namespace per job and channel.

Under `flame/<job>/<channel>/<group>/`:

| topic                          | payload                                   | retained |
| ------------------------------ | ----------------------------------------- | -------- |
| `presence/<role>/<end_id>`     | Presence JOIN; empty once the end is gone | yes      |
| `leave/<role>/<end_id>`        | Presence LEAVE                            | no       |
| `data/<receiver_id>`           | Chunk frames addressed to one end         | no       |
| `ack/<sender_id>`              | Ack frames addressed to a message's sender | no      |

The job id leads so that one broker ACL line, `pattern readwrite flame/%u/#` with the
job id as username, confines a job's credentials to its own topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flame.flamelet.dataplane.transport import Endpoint

__all__ = ["PREFIX", "ChannelTopics", "TopicKind"]

PREFIX = "flame"

TopicKind = Literal["presence", "leave", "data", "ack"]


@dataclass(frozen=True)
class ChannelTopics:
    """The topics of one end on one channel and group."""

    endpoint: Endpoint

    @property
    def base(self) -> str:
        """`flame/<job>/<channel>/<group>`."""
        e = self.endpoint
        return f"{PREFIX}/{e.job_id}/{e.channel}/{e.group}"

    @property
    def own_presence(self) -> str:
        """Where this end's retained presence lives."""
        return f"{self.base}/presence/{self.endpoint.role}/{self.endpoint.end_id}"

    @property
    def own_leave(self) -> str:
        """Where this end announces that it leaves."""
        return f"{self.base}/leave/{self.endpoint.role}/{self.endpoint.end_id}"

    def data(self, receiver_id: str) -> str:
        """Where chunks for `receiver_id` go."""
        return f"{self.base}/data/{receiver_id}"

    def ack(self, sender_id: str) -> str:
        """Where acks for messages of `sender_id` go."""
        return f"{self.base}/ack/{sender_id}"

    def subscriptions(self) -> list[str]:
        """The filters this end subscribes to: the other role's presence and leaves,
        and the chunks and acks addressed to it."""
        other = self.endpoint.other_role
        return [
            f"{self.base}/presence/{other}/+",
            f"{self.base}/leave/{other}/+",
            self.data(self.endpoint.end_id),
            self.ack(self.endpoint.end_id),
        ]

    def parse(self, topic: str) -> tuple[TopicKind, str, str] | None:
        """Split a received topic into (kind, role, end id); role is "" for data and ack.

        Returns:
            None for a topic outside this end's subscriptions.
        """
        if not topic.startswith(self.base + "/"):
            return None
        levels = topic[len(self.base) + 1 :].split("/")
        match levels:
            case ["presence" | "leave" as kind, role, end_id] if role == self.endpoint.other_role:
                return kind, role, end_id
            case ["data" | "ack" as kind, end_id] if end_id == self.endpoint.end_id:
                return kind, "", end_id
        return None
