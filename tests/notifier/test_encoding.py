"""EventEncoder: events laid out by hand read back as the messages protobuf would build."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from flame.notifier import encoding
from flame.notifier.encoding import EventEncoder
from flame.notifier.hub import Heartbeat
from flame.notifier.store import StoredEvent
from flame.notify.v1 import event_pb2, notify_service_pb2

WHEN = datetime(2026, 11, 28, 12, 30, 15, 123000, tzinfo=UTC)


def expected(event: StoredEvent) -> event_pb2.Event:
    """The event as protobuf builds it, from its JSON mapping: an oracle of another make."""
    fields = {
        "cursor": str(event.cursor),
        "subscriber": event.subscriber,
        "type": event.type,
        "jobId": event.job_id,
        "taskIds": list(event.task_ids),
        "publishTime": event.publish_time.isoformat(),
    }
    return json_format.ParseDict(fields, event_pb2.Event())


names = st.text(min_size=1, max_size=80)
events = st.builds(
    StoredEvent,
    subscriber=names,
    cursor=st.integers(min_value=1, max_value=2**62),
    type=st.sampled_from(["TYPE_START_JOB", "TYPE_STOP_JOB", "TYPE_REVOKE_RESOURCE"]),
    job_id=names,
    task_ids=st.lists(names, max_size=5).map(tuple),
    publish_time=st.just(WHEN),
)


@given(event=events)
def test_a_stream_response_reads_back_as_its_event(event: StoredEvent) -> None:
    response = notify_service_pb2.SubscribeEventsResponse.FromString(
        EventEncoder().stream_response(event)
    )
    assert response == notify_service_pb2.SubscribeEventsResponse(event=expected(event))


@given(event=events, subscribers=st.lists(names, min_size=1, max_size=20))
def test_the_events_of_one_publication_differ_only_in_their_subscriber(
    event: StoredEvent, subscribers: list[str]
) -> None:
    encoder = EventEncoder()
    published = [dataclasses.replace(event, subscriber=s) for s in subscribers]
    response = notify_service_pb2.PublishEventResponse.FromString(
        encoder.publish_response(published)
    )
    assert list(response.events) == [expected(e) for e in published]
    # Streams of the same publication reuse its shared part with their own subscriber.
    for one in published:
        parsed = event_pb2.Event.FromString(encoder.event(one))
        assert parsed == expected(one)


def test_a_heartbeat_is_a_plain_message() -> None:
    response = notify_service_pb2.SubscribeEventsResponse.FromString(
        EventEncoder().stream_response(Heartbeat(last_cursor=42))
    )
    assert response.WhichOneof("content") == "heartbeat"
    assert response.heartbeat.last_cursor == 42


def test_a_publication_is_serialized_once_while_it_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoding, "_REMEMBERED_PUBLICATIONS", 2)
    built: list[int] = []
    shared_fields = encoding._shared_fields

    def counting(event: StoredEvent) -> event_pb2.Event:
        built.append(event.cursor)
        return shared_fields(event)

    monkeypatch.setattr(encoding, "_shared_fields", counting)
    encoder = EventEncoder()
    for cursor, subscriber in [(1, "task/a"), (1, "task/b"), (2, "task/a"), (3, "task/a")]:
        encoder.event(StoredEvent(subscriber, cursor, "TYPE_STOP_JOB", "job", (), WHEN))
    assert built == [1, 2, 3]
    encoder.event(StoredEvent("task/c", 1, "TYPE_STOP_JOB", "job", (), WHEN))
    assert built == [1, 2, 3, 1]  # the oldest was forgotten
