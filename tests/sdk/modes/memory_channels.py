"""In-memory channels for running several roles in one process (one thread each).

`MemoryHub` is the shared medium; `hub.manager(config)` gives a role the stand-in of its
`ChannelManager` (assign it to `role.cm` before `run()`). Its channels implement the
`flame.channel.Channel` methods the modes use, with the same errors and deadlines.
Messages go through the real `flame.wire` codec, so roles receive what they would from a
real data plane: `str` keys that also answer lookups by `MessageType`, CPU tensors.

A task's ends on a channel are the tasks of the other role in the same group. Leaving
(`cleanup()`) makes pending and later receives from that task fail with `EndLeftError`,
as when a real peer's flamelet goes away; `silent=True` managers never leave, like a
peer that hangs without its connection dropping.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flame.config import Config
from flame.errors import EndLeftError, EndNotFoundError, JoinTimeoutError, ReceiveTimeoutError
from flame.wire import decode, encode_bytes


class ReceivedMessage(dict[str, Any]):
    """A decoded message that also answers lookups by enum member, like the real one."""

    def __getitem__(self, key: str | enum.Enum) -> Any:
        return super().__getitem__(key.name if isinstance(key, enum.Enum) else key)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.name if isinstance(key, enum.Enum) else key)

    def get(self, key: str | enum.Enum, default: Any = None) -> Any:
        return super().get(key.name if isinstance(key, enum.Enum) else key, default)


@dataclass
class _Member:
    role: str
    group: str


@dataclass
class _Inbox:
    """Per (channel, receiver): sender -> queued (sequence, frame)."""

    queues: dict[str, deque[tuple[int, bytes]]] = field(default_factory=dict)


class MemoryHub:
    """The medium every in-memory channel of a test shares."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._members: dict[str, dict[str, _Member]] = {}  # channel -> task id -> member
        self._inboxes: dict[tuple[str, str], _Inbox] = {}
        self._sequence = itertools.count()
        self.sent: list[tuple[str, str, str, Mapping[str, Any]]] = []  # channel, from, to, msg

    def manager(self, config: Config, *, silent: bool = False) -> MemoryChannelManager:
        """The channel manager of the task `config` describes."""
        return MemoryChannelManager(self, config, silent=silent)

    def join(self, channel: str, task_id: str, role: str, group: str) -> None:
        with self._changed:
            self._members.setdefault(channel, {})[task_id] = _Member(role, group)
            self._changed.notify_all()

    def leave(self, channel: str, task_id: str) -> None:
        with self._changed:
            self._members.get(channel, {}).pop(task_id, None)
            self._changed.notify_all()

    def ends(self, channel: str, task_id: str, other_role: str) -> list[str]:
        with self._changed:
            return self._ends(channel, task_id, other_role)

    def send(self, channel: str, sender: str, receiver: str, frame: bytes) -> None:
        with self._changed:
            if receiver not in self._members.get(channel, {}):
                raise EndNotFoundError(channel, receiver, "is not on the channel")
            inbox = self._inboxes.setdefault((channel, receiver), _Inbox())
            inbox.queues.setdefault(sender, deque()).append((next(self._sequence), frame))
            self.sent.append((channel, sender, receiver, decode(frame)))
            self._changed.notify_all()

    def receive(
        self, channel: str, receiver: str, senders: Sequence[str], timeout: float
    ) -> tuple[str, bytes]:
        """The earliest queued frame from one of `senders`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._earliest(channel, receiver, senders)
                if found is not None:
                    return found
                for sender in senders:
                    if sender not in self._members.get(channel, {}):
                        raise EndLeftError(channel, sender, "left the channel")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReceiveTimeoutError(channel, timeout, senders)
                self._changed.wait(remaining)

    def wait_for_end(self, channel: str, task_id: str, other_role: str, timeout: float) -> None:
        with self._changed:
            joined = self._changed.wait_for(
                lambda: self._ends(channel, task_id, other_role), timeout
            )
        if not joined:
            raise JoinTimeoutError(channel, timeout, "no end joined")

    def _ends(self, channel: str, task_id: str, other_role: str) -> list[str]:
        members = self._members.get(channel, {})
        me = members.get(task_id)
        if me is None:
            return []
        return sorted(
            end
            for end, member in members.items()
            if end != task_id and member.role == other_role and member.group == me.group
        )

    def _earliest(
        self, channel: str, receiver: str, senders: Sequence[str]
    ) -> tuple[str, bytes] | None:
        inbox = self._inboxes.get((channel, receiver))
        if inbox is None:
            return None
        heads = [(inbox.queues[s][0][0], s) for s in senders if inbox.queues.get(s)]
        if not heads:
            return None
        _, sender = min(heads)
        return sender, inbox.queues[sender].popleft()[1]


class MemoryChannel:
    """One task's view of an in-memory channel; the `flame.channel.Channel` methods."""

    def __init__(self, hub: MemoryHub, name: str, task_id: str, other_role: str) -> None:
        self._hub = hub
        self._name = name
        self._task_id = task_id
        self._other_role = other_role
        self.properties: dict[str, Any] = {}
        self.end_properties: dict[str, dict[str, Any]] = {}

    def name(self) -> str:
        return self._name

    def other_role(self) -> str:
        return self._other_role

    def ends(self, state: str | None = None) -> list[str]:
        return self._hub.ends(self._name, self._task_id, self._other_role)

    def one_end(self, state: str | None = None) -> str | None:
        ends = self.ends(state)
        return ends[0] if ends else None

    def await_join(self, timeout: float | None = None) -> bool:
        self._hub.wait_for_end(self._name, self._task_id, self._other_role, timeout or 300.0)
        return True

    def set_property(self, key: str, value: Any) -> None:
        self.properties[key] = value

    def set_end_property(self, end_id: str, key: str, value: Any) -> None:
        self.end_properties.setdefault(end_id, {})[key] = value

    def send(self, end_id: str, message: Mapping[Any, Any], timeout: float | None = None) -> None:
        self._hub.send(self._name, self._task_id, end_id, encode_bytes(message))

    def broadcast(self, message: Mapping[Any, Any], timeout: float | None = None) -> None:
        frame = encode_bytes(message)
        for end in self.ends():
            self._hub.send(self._name, self._task_id, end, frame)

    def recv(self, end_id: str, timeout: float | None = None) -> tuple[ReceivedMessage, datetime]:
        _, frame = self._hub.receive(self._name, self._task_id, [end_id], timeout or 300.0)
        return ReceivedMessage(decode(bytearray(frame))), datetime.now(UTC)

    def recv_fifo(
        self, end_ids: Sequence[str], first_k: int = 0, timeout: float | None = None
    ) -> Iterator[tuple[ReceivedMessage, tuple[str, datetime]]]:
        pending = list(dict.fromkeys(end_ids))
        count = first_k if 0 < first_k < len(pending) else len(pending)
        for _ in range(count):
            end, frame = self._hub.receive(self._name, self._task_id, pending, timeout or 300.0)
            pending.remove(end)
            yield ReceivedMessage(decode(bytearray(frame))), (end, datetime.now(UTC))


class MemoryChannelManager:
    """The `ChannelManager` methods the modes use, over a `MemoryHub`."""

    def __init__(self, hub: MemoryHub, config: Config, *, silent: bool) -> None:
        self._hub = hub
        self._config = config
        self._silent = silent
        self._channels: dict[str, MemoryChannel] = {}

    def join_all(self) -> None:
        for name, channel in self._config.channels.items():
            if name in self._channels:
                continue
            task_id, role = self._config.task_id, self._config.role
            self._hub.join(name, task_id, role, self._config.group_of(name))
            other = channel.other_role(role)
            self._channels[name] = MemoryChannel(self._hub, name, task_id, other)

    def get_by_tag(self, tag: str) -> MemoryChannel | None:
        name = self._config.func_tag_map.get(tag)
        return None if name is None else self._channels.get(name)

    def cleanup(self) -> None:
        if self._silent:
            return
        for name in self._channels:
            self._hub.leave(name, self._config.task_id)
