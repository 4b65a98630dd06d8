"""A channel between this task and the tasks of another role: ends, selection, messages."""

from __future__ import annotations

import enum
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from flame._dataplane_client import DataPlaneClient, Received
from flame.end import KEY_END_STATE, VAL_END_STATE_RECVD, End
from flame.errors import (
    DataPlaneError,
    JoinTimeoutError,
    MessageError,
    ReceiveTimeoutError,
    SendTimeoutError,
)
from flame.selector import Selector
from flame.wire import DecodeError, EncodedMessage, decode, encode

__all__ = [
    "KEY_CH_SELECT_REQUESTER",
    "KEY_CH_STATE",
    "VAL_CH_STATE_RECV",
    "VAL_CH_STATE_SEND",
    "Channel",
    "Timeouts",
]

# Channel properties `ends()` maintains for the selector.
KEY_CH_STATE: Final = "state"
VAL_CH_STATE_RECV: Final = "recv"
VAL_CH_STATE_SEND: Final = "send"
KEY_CH_SELECT_REQUESTER: Final = "requester"


@dataclass(frozen=True)
class Timeouts:
    """Default deadlines of the blocking channel calls, in seconds.

    Each call also takes its own `timeout`, which wins.

    Attributes:
        recv: `recv`, and each message of `recv_fifo`.
        send: `send` and `broadcast`: until the flamelet took the whole message.
        join: `await_join`.
        call: Calls that do not wait for peers (join, leave, listing ends, `peek`).
    """

    recv: float = 300.0
    send: float = 300.0
    join: float = 300.0
    call: float = 30.0


class _Message(dict[str, Any]):
    """A received message: `str` keys; an enum member looks up by its name, so that
    `msg[MessageType.WEIGHTS]` and `MessageType.EOT in msg` work as in the original."""

    def __getitem__(self, key: str | enum.Enum) -> Any:
        return super().__getitem__(_key_name(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.name if isinstance(key, enum.Enum) else key)

    def get(self, key: str | enum.Enum, default: Any = None) -> Any:
        return super().get(_key_name(key), default)


def _key_name(key: str | enum.Enum) -> str:
    return key.name if isinstance(key, enum.Enum) else key


class Channel:
    """This task's view of one joined channel: its ends (peers) and their messages.

    Get channels from a `ChannelManager`, never by constructing them. Messages are dicts
    keyed by `str` or enum members (`MessageType`) with values the `flame.wire` codec
    carries: None, bool, int, float, str, bytes, lists, nested dicts, NumPy arrays and
    torch tensors of any dtype (received on CPU). Received messages have `str` keys and
    also answer lookups by enum member. Nothing is pickled.

    Every blocking call has a deadline: the call's `timeout`, else the `Timeouts` the
    manager was made with. Calls about a peer raise `EndLeftError` when it left while
    the call waited and `EndNotFoundError` when it is not on the channel. (The original
    returned `(None, None)` from `recv` and ignored `send` then.)

    Channel methods are thread-safe.

    Example:
        >>> channel = manager.get_by_tag("fetch")               # doctest: +SKIP
        >>> channel.await_join(timeout=60)                       # doctest: +SKIP
        True
        >>> aggregator = channel.one_end(VAL_CH_STATE_RECV)      # doctest: +SKIP
        >>> message, received_at = channel.recv(aggregator)      # doctest: +SKIP
        >>> weights = message[MessageType.WEIGHTS]               # doctest: +SKIP
        >>> channel.send(aggregator, {MessageType.WEIGHTS: delta})  # doctest: +SKIP
    """

    def __init__(
        self,
        client: DataPlaneClient,
        *,
        job_id: str,
        name: str,
        me: str,
        other: str,
        group: str,
        task_id: str,
        selector: Selector,
        timeouts: Timeouts,
    ) -> None:
        """Made by `ChannelManager.join`, after the data plane joined the channel."""
        self._client = client
        self._job_id = job_id
        self._name = name
        self._my_role = me
        self._other_role = other
        self._groupby = group
        self._task_id = task_id
        self._selector = selector
        self._timeouts = timeouts
        self._lock = threading.Lock()
        self._ends: dict[str, End] = {}
        self.properties: dict[str, Any] = {}

    # Identity.

    def job_id(self) -> str:
        """The job's id."""
        return self._job_id

    def name(self) -> str:
        """The channel's name."""
        return self._name

    def my_role(self) -> str:
        """This task's role."""
        return self._my_role

    def other_role(self) -> str:
        """The role of the ends (the same role on a ring channel)."""
        return self._other_role

    def groupby(self) -> str:
        """The group this task joined on the channel."""
        return self._groupby

    def get_backend_id(self) -> str:
        """This task's id: its end id on the channel."""
        return self._task_id

    # Properties.

    def set_property(self, key: str, value: Any) -> None:
        """Set a channel property; the selector sees it (aggregators set `round`)."""
        with self._lock:
            self.properties[key] = value

    def set_end_property(self, end_id: str, key: str, value: Any) -> None:
        """Set a property of an end; nothing happens if the end is unknown."""
        with self._lock:
            end = self._ends.get(end_id)
            if end is not None:
                end.set_property(key, value)

    def get_end_property(self, end_id: str, key: str) -> Any:
        """A property of an end; None if the end or the property is unknown."""
        with self._lock:
            end = self._ends.get(end_id)
            return None if end is None else end.get_property(key)

    # Membership.

    def await_join(self, timeout: float | None = None) -> bool:
        """Block until at least one end is on the channel.

        Unlike the original, which returned True when it *timed out*, this returns True
        once an end is there and raises on timeout.

        Args:
            timeout: Seconds to wait; default `Timeouts.join`.

        Returns:
            True.

        Raises:
            JoinTimeoutError: No end joined in time.
        """
        wait = self._timeouts.join if timeout is None else timeout
        self._client.wait_for_end(
            self._name, wait, lambda: JoinTimeoutError(self._name, wait, "no end joined")
        )
        return True

    def empty(self) -> bool:
        """True when the channel has no end."""
        return not self._refresh()

    def all_ends(self) -> list[str]:
        """Every current end id, without the selector."""
        return list(self._refresh())

    def ends(self, state: str | None = None) -> list[str]:
        """The end ids the channel's selector chooses.

        Args:
            state: `"send"` or `"recv"` is stored as the channel property `state`, which
                stays until changed; other values are ignored (as in the original).

        Returns:
            The selected end ids, in the selector's order. Ends that left are never
            returned, even if the selector keeps them.
        """
        ends = self._refresh()
        with self._lock:
            if state in (VAL_CH_STATE_SEND, VAL_CH_STATE_RECV):
                self.properties[KEY_CH_STATE] = state
            self.properties[KEY_CH_SELECT_REQUESTER] = self._task_id
            selected = self._selector.select(ends, dict(self.properties))
            for end_id, end_property in selected.items():
                if end_property is not None and end_id in ends:
                    ends[end_id].set_property(*end_property)
        return [end_id for end_id in selected if end_id in ends]

    def one_end(self, state: str | None = None) -> str | None:
        """The first of `ends(state)`, or None; for talking to "the" aggregator."""
        selected = self.ends(state)
        return selected[0] if selected else None

    def ends_digest(self) -> str:
        """A membership fingerprint: this task's id XORed, character by character, with
        every selected end id (the same on every member that sees the same members);
        "" when no end is selected."""
        digest = self._task_id
        selected = self.ends()
        for end_id in selected:
            digest = "".join(chr(ord(a) ^ ord(b)) for a, b in zip(digest, end_id, strict=False))
        return digest if selected else ""

    # Messages.

    def send(self, end_id: str, message: Mapping[Any, Any], timeout: float | None = None) -> None:
        """Send a message to one end; per-end order is kept.

        Returns once the flamelet took the whole message, not once it was delivered.

        Args:
            end_id: The receiving end.
            message: The message.
            timeout: Seconds to wait for the flamelet; default `Timeouts.send`.

        Raises:
            MessageError: The message holds a value the codec cannot carry.
            EndNotFoundError: The end is not on the channel.
            SendTimeoutError: The flamelet did not take the message in time.
        """
        self._send(message, [end_id], timeout)

    def broadcast(self, message: Mapping[Any, Any], timeout: float | None = None) -> None:
        """Send a message to every current end, regardless of the selector.

        Args and raises as for `send`.
        """
        self._send(message, [], timeout)

    def recv(self, end_id: str, timeout: float | None = None) -> tuple[dict[str, Any], datetime]:
        """Receive the next message from one end.

        Args:
            end_id: The sending end.
            timeout: Seconds to wait; default `Timeouts.recv`.

        Returns:
            The message and when its last byte arrived (UTC). The end's property
            `state` becomes `"recvd"`.

        Raises:
            ReceiveTimeoutError: No message came in time.
            EndLeftError: The end left while waiting.
            EndNotFoundError: The end is not on the channel.
            MessageError: The message arrived malformed; it is dropped.
        """
        received = self._receive([end_id], timeout)
        return self._accept(received), received.receive_time

    def recv_fifo(
        self, end_ids: Sequence[str], first_k: int = 0, timeout: float | None = None
    ) -> Generator[tuple[dict[str, Any], tuple[str, datetime]], None, None]:
        """Yield one message from each of several ends, in arrival order.

        Messages are taken from the flamelet one at a time, only when the caller asks
        for the next one. So when the caller stops early (`break`, `close()`, or after
        `first_k`), every message not yet yielded stays queued at its end and the next
        `recv` or `recv_fifo` for that end returns it: nothing is lost or duplicated,
        and nothing from this call leaks into a later call for other ends.

        Args:
            end_ids: The ends to receive from; duplicates count once.
            first_k: How many messages to yield; 0, negative or more than the ends
                means one from every end.
            timeout: Seconds to wait for each message (the caller's time between two
                yields does not count); default `Timeouts.recv`.

        Yields:
            `(message, (end_id, receive_time))`, each end at most once.

        Raises:
            ReceiveTimeoutError: The next message did not come in time.
            EndLeftError: One of the awaited ends left; `end_id` names it. Messages
                from the others stay queued: call again with the rest.
            EndNotFoundError, MessageError: As for `recv`.
        """
        pending = list(dict.fromkeys(end_ids))
        count = first_k if 0 < first_k < len(pending) else len(pending)
        for _ in range(count):
            received = self._receive(pending, timeout)
            if received.end_id not in pending:
                raise DataPlaneError(f"a message from unasked end {received.end_id!r} came")
            pending.remove(received.end_id)
            yield self._accept(received), (received.end_id, received.receive_time)

    def peek(self, end_id: str) -> tuple[dict[str, Any], datetime] | tuple[None, None]:
        """The next message from `end_id` without consuming it, or `(None, None)` if no
        message is complete yet. Does not wait."""
        received = self._client.receive(
            self._name,
            [end_id],
            timeout=self._timeouts.call,
            on_timeout=lambda: ReceiveTimeoutError(self._name, self._timeouts.call, [end_id]),
            peek=True,
        )
        if received is None:
            return None, None
        return _decode(self._name, received), received.receive_time

    # Internals.

    def _refresh(self) -> dict[str, End]:
        """Sync the ends with the data plane; keep the properties of ends still there."""
        current = self._client.list_ends(self._name)
        with self._lock:
            self._ends = {end.end_id: self._ends.get(end.end_id, end) for end in current}
            return dict(self._ends)

    def _send(self, message: Mapping[Any, Any], end_ids: list[str], timeout: float | None) -> None:
        wait = self._timeouts.send if timeout is None else timeout
        self._client.send(
            self._name,
            _encode(self._name, message),
            end_ids=end_ids,
            timeout=wait,
            on_timeout=lambda: SendTimeoutError(self._name, wait, "the message was not taken"),
        )

    def _receive(self, end_ids: Sequence[str], timeout: float | None) -> Received:
        wait = self._timeouts.recv if timeout is None else timeout
        received = self._client.receive(
            self._name,
            end_ids,
            timeout=wait,
            on_timeout=lambda: ReceiveTimeoutError(self._name, wait, end_ids),
        )
        if received is None:
            raise DataPlaneError(f"channel {self._name!r}: a receive returned no message")
        return received

    def _accept(self, received: Received) -> dict[str, Any]:
        """Mark the end as received from (even if the message is bad), then decode."""
        self.set_end_property(received.end_id, KEY_END_STATE, VAL_END_STATE_RECVD)
        return _decode(self._name, received)


def _encode(channel: str, message: Mapping[Any, Any]) -> EncodedMessage:
    try:
        return encode(message)
    except (TypeError, ValueError) as exc:
        raise MessageError(channel, f"cannot encode the message: {exc}") from exc


def _decode(channel: str, received: Received) -> dict[str, Any]:
    try:
        return _Message(decode(received.data))
    except DecodeError as exc:
        raise MessageError(
            channel, f"a message from end {received.end_id!r} is malformed: {exc}"
        ) from exc
