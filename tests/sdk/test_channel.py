"""Channel semantics against a fake ChannelService with two simulated ends."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import torch

from flame.channel import Channel
from flame.channel_manager import ChannelManager
from flame.end import KEY_END_STATE, VAL_END_STATE_RECVD
from flame.errors import (
    ChannelNotJoinedError,
    EndLeftError,
    EndNotFoundError,
    JoinTimeoutError,
    MessageError,
    ReceiveTimeoutError,
)
from flame.mode.message import MessageType
from flame.selector import RoundCachedSelector
from flame.wire import DEFAULT_CHUNK_BYTES, decode
from tests.sdk.conftest import CHANNEL, PEERS, TASK_ID
from tests.sdk.fake_dataplane import FakeDataPlane
from tests.wire.equality import assert_same

EU, NA = PEERS


def tensors() -> dict[str, Any]:
    """A state dict of every torch dtype the codec carries, and numpy arrays beside it."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, Any] = {
        str(dtype): (torch.randn(3, 4, generator=generator) * 50).to(dtype)
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    }
    state |= {
        "torch.int64": torch.arange(-6, 6).reshape(2, 6),
        "torch.uint8": torch.arange(7, dtype=torch.uint8),
        "torch.bool": torch.tensor([True, False, True]),
        "torch.complex64": torch.randn(2, dtype=torch.complex64, generator=generator),
        "torch.scalar": torch.tensor(2.5),
        "torch.strided": torch.arange(12.0).reshape(3, 4).t(),
    }
    rng = np.random.default_rng(0)
    for dtype in ("f4", "f8", "f2", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "c8", "c16"):
        state[f"numpy.{dtype}"] = (rng.standard_normal((2, 3)) * 50).astype(dtype)
    state["numpy.big-endian"] = np.arange(5, dtype=">i4")
    state["numpy.bool"] = np.array([[True], [False]])
    return state


def round_trip(channel: Channel, dataplane: FakeDataPlane, message: dict[Any, Any]) -> Any:
    """Send `message` to EU, have EU send the same bytes back, and receive them."""
    channel.send(EU, message)
    dataplane.deliver(CHANNEL, EU, dataplane.service.sent[-1].data)
    received, _ = channel.recv(EU)
    return received


# Identity and ends.


def test_identity(channel: Channel) -> None:
    assert channel.job_id() == "64145f7b10b9b3b94f5252ac"
    assert (channel.name(), channel.my_role(), channel.other_role()) == (
        CHANNEL,
        "trainer",
        "middle-aggregator",
    )
    assert (channel.groupby(), channel.get_backend_id()) == ("na", TASK_ID)


def test_ends_run_the_selector_once_per_round(channel: Channel, dataplane: FakeDataPlane) -> None:
    assert channel.ends() == [EU, NA] and channel.one_end() == EU
    dataplane.add_end(CHANNEL, "agg-late")

    assert channel.ends() == [EU, NA]
    assert channel.all_ends() == [EU, NA, "agg-late"]
    channel.set_property("round", 1)
    assert channel.ends() == [EU, NA, "agg-late"]


def test_ends_that_left_are_never_returned(channel: Channel, dataplane: FakeDataPlane) -> None:
    channel.ends()
    dataplane.remove_end(CHANNEL, EU)

    assert channel.ends() == [NA]
    dataplane.remove_end(CHANNEL, NA)
    assert (channel.ends(), channel.one_end(), channel.empty()) == ([], None, True)
    assert channel.ends_digest() == ""


def test_ends_state_is_sticky_and_selector_properties_land_on_ends(
    channel: Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    class Tagging(RoundCachedSelector):
        def _choose(self, ends: Any) -> list[str]:
            return list(ends)

        def select(self, ends: Any, channel_props: Any) -> Any:
            seen.append(dict(channel_props))
            return {end_id: ("picked", True) for end_id in super().select(ends, channel_props)}

    monkeypatch.setattr(channel, "_selector", Tagging())
    channel.ends("send")
    channel.ends()
    channel.ends("bogus")

    assert [props["state"] for props in seen] == ["send", "send", "send"]
    assert all(props["requester"] == TASK_ID for props in seen)
    assert channel.get_end_property(EU, "picked") is True


def test_end_properties(channel: Channel) -> None:
    channel.all_ends()
    channel.set_end_property(EU, "round_start_time", (1, "t0"))
    channel.set_end_property("nobody", "x", 1)

    assert channel.get_end_property(EU, "round_start_time") == (1, "t0")
    assert channel.get_end_property(NA, "round_start_time") is None
    assert channel.get_end_property("nobody", "x") is None


def test_ends_digest_is_the_same_for_every_member(channel: Channel) -> None:
    def xor(*ids: str) -> str:
        digest = ids[0]
        for other in ids[1:]:
            digest = "".join(chr(ord(a) ^ ord(b)) for a, b in zip(digest, other, strict=False))
        return digest

    assert channel.ends_digest() == xor(TASK_ID, EU, NA) == xor(EU, TASK_ID, NA)


def test_await_join(channel: Channel, dataplane: FakeDataPlane, manager: ChannelManager) -> None:
    assert channel.await_join(timeout=1) is True

    dataplane.remove_end(CHANNEL, EU)
    dataplane.remove_end(CHANNEL, NA)
    started = time.monotonic()
    with pytest.raises(JoinTimeoutError) as caught:
        channel.await_join(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    assert isinstance(caught.value, TimeoutError) and caught.value.timeout == 0.3

    dataplane.later(0.2, dataplane.service.add_end(CHANNEL, "agg-new"))
    assert channel.await_join(timeout=5) is True


# Messages.


def test_tensors_round_trip(channel: Channel, dataplane: FakeDataPlane) -> None:
    message = {
        MessageType.WEIGHTS: tensors(),
        MessageType.DATASET_SIZE: 600,
        MessageType.ROUND: np.int64(3),
        "nested": {"lr": 0.5, "name": "fedavg", "flags": [True, None, b"\x00\x01"]},
    }

    received = round_trip(channel, dataplane, message)

    assert_same(dict(received), message)
    assert received[MessageType.WEIGHTS]["torch.bfloat16"].dtype == torch.bfloat16
    assert MessageType.ROUND in received and received["ROUND"] == 3
    assert received.get(MessageType.EOT, "absent") == "absent"


def test_large_messages_travel_in_bounded_chunks(
    channel: Channel, dataplane: FakeDataPlane
) -> None:
    weights = {"w": torch.randn(3 * DEFAULT_CHUNK_BYTES // 4 + 11)}

    received = round_trip(channel, dataplane, weights)

    sizes = dataplane.service.sent[-1].chunk_sizes
    assert len(sizes) == 4 and max(sizes) == DEFAULT_CHUNK_BYTES
    header = dataplane.service.sent[-1].header
    assert header.total_size == sum(sizes) and list(header.end_ids) == [EU]
    assert torch.equal(received["w"], weights["w"])


def test_broadcast_goes_to_every_end(channel: Channel, dataplane: FakeDataPlane) -> None:
    channel.broadcast({MessageType.EOT: True})

    sent = dataplane.service.sent[-1]
    assert sent.header.broadcast and not sent.header.end_ids
    assert decode(sent.data) == {"EOT": True}


def test_recv_marks_the_end_and_stamps_the_arrival(
    channel: Channel, dataplane: FakeDataPlane
) -> None:
    channel.all_ends()
    dataplane.deliver(CHANNEL, NA, {"x": 1})

    message, received_at = channel.recv(NA)

    assert message == {"x": 1}
    assert abs((datetime.now(UTC) - received_at).total_seconds()) < 5
    assert channel.get_end_property(NA, KEY_END_STATE) == VAL_END_STATE_RECVD
    assert channel.get_end_property(EU, KEY_END_STATE) is None


def test_recv_timeout(channel: Channel) -> None:
    started = time.monotonic()
    with pytest.raises(ReceiveTimeoutError) as caught:
        channel.recv(EU, timeout=0.3)

    assert 0.25 < time.monotonic() - started < 3
    assert caught.value.end_ids == (EU,) and caught.value.channel == CHANNEL
    assert isinstance(caught.value, TimeoutError)


def test_recv_from_an_end_that_leaves(channel: Channel, dataplane: FakeDataPlane) -> None:
    dataplane.later(0.2, dataplane.service.remove_end(CHANNEL, EU))

    with pytest.raises(EndLeftError) as caught:
        channel.recv(EU, timeout=5)

    assert caught.value.end_id == EU


def test_unknown_ends(channel: Channel) -> None:
    with pytest.raises(EndNotFoundError) as caught:
        channel.recv("nobody")
    assert caught.value.end_id == "nobody"
    with pytest.raises(EndNotFoundError):
        channel.send("nobody", {"x": 1})


def test_recv_fifo_yields_in_arrival_order(channel: Channel, dataplane: FakeDataPlane) -> None:
    dataplane.add_end(CHANNEL, "agg-3")
    for end_id in (NA, "agg-3", EU):
        dataplane.deliver(CHANNEL, end_id, {"from": end_id})

    got = [(msg["from"], end) for msg, (end, _) in channel.recv_fifo([EU, NA, "agg-3"])]

    assert got == [(NA, NA), ("agg-3", "agg-3"), (EU, EU)]


def test_recv_fifo_takes_one_message_per_end(channel: Channel, dataplane: FakeDataPlane) -> None:
    for n in range(2):
        dataplane.deliver(CHANNEL, EU, {"n": n})
    dataplane.deliver(CHANNEL, NA, {"n": 9})

    got = [(end, msg["n"]) for msg, (end, _) in channel.recv_fifo([EU, NA])]

    assert got == [(EU, 0), (NA, 9)]
    assert channel.recv(EU)[0] == {"n": 1}


def test_recv_fifo_leftovers_stay_queued_per_end(
    channel: Channel, dataplane: FakeDataPlane
) -> None:
    dataplane.add_end(CHANNEL, "agg-3")
    for end_id in (NA, EU, "agg-3"):
        dataplane.deliver(CHANNEL, end_id, {"from": end_id})

    first = [end for _, (end, _) in channel.recv_fifo([EU, NA, "agg-3"], first_k=1)]
    stream = channel.recv_fifo([EU, "agg-3"])
    second = next(stream)[1][0]
    stream.close()

    assert (first, second) == ([NA], EU)
    assert dataplane.service.queued(CHANNEL) == {"agg-3": 1}
    assert channel.recv("agg-3")[0] == {"from": "agg-3"}
    with pytest.raises(ReceiveTimeoutError):
        next(channel.recv_fifo([EU, NA], timeout=0.2))


def test_recv_fifo_edge_cases(channel: Channel, dataplane: FakeDataPlane) -> None:
    assert list(channel.recv_fifo([])) == []
    dataplane.deliver(CHANNEL, EU, {"x": 1})
    assert [end for _, (end, _) in channel.recv_fifo([EU, EU], first_k=5)] == [EU]


def test_recv_fifo_timeout_counts_per_message(channel: Channel, dataplane: FakeDataPlane) -> None:
    dataplane.deliver(CHANNEL, EU, {"x": 1})
    stream = channel.recv_fifo([EU, NA], timeout=0.3)
    next(stream)
    time.sleep(0.4)  # the caller's own time between two messages does not count
    dataplane.deliver(CHANNEL, NA, {"x": 2})

    assert next(stream)[1][0] == NA


def test_recv_fifo_raises_when_an_awaited_end_leaves(
    channel: Channel, dataplane: FakeDataPlane
) -> None:
    dataplane.add_end(CHANNEL, "agg-3")
    dataplane.deliver(CHANNEL, "agg-3", {"x": 3})
    dataplane.later(0.2, dataplane.service.remove_end(CHANNEL, NA))
    stream = channel.recv_fifo([EU, NA, "agg-3"], timeout=5)

    assert next(stream)[1][0] == "agg-3"
    with pytest.raises(EndLeftError) as caught:
        next(stream)
    assert caught.value.end_id == NA


def test_peek_leaves_the_message_queued(channel: Channel, dataplane: FakeDataPlane) -> None:
    assert channel.peek(EU) == (None, None)
    dataplane.deliver(CHANNEL, EU, {"x": 1})

    peeked, _ = channel.peek(EU)

    assert peeked == {"x": 1}
    assert channel.recv(EU)[0] == {"x": 1}
    assert channel.peek(EU) == (None, None)


def test_unencodable_messages(channel: Channel, dataplane: FakeDataPlane) -> None:
    with pytest.raises(MessageError, match="cannot encode"):
        channel.send(EU, {"model": object()})
    with pytest.raises(MessageError, match="cannot encode"):
        channel.send(EU, {1: "int key"})
    assert dataplane.service.sent == []


def test_malformed_messages_are_dropped_with_an_error(
    channel: Channel, dataplane: FakeDataPlane
) -> None:
    dataplane.deliver(CHANNEL, EU, b"\x80\x04pickle?")
    dataplane.deliver(CHANNEL, EU, {"x": 1})

    with pytest.raises(MessageError, match=f"from end '{EU}' is malformed"):
        channel.recv(EU)
    assert channel.recv(EU)[0] == {"x": 1}


def test_a_left_channel_is_not_joined(channel: Channel, manager: ChannelManager) -> None:
    manager.leave(CHANNEL)

    with pytest.raises(ChannelNotJoinedError):
        channel.recv(EU)
