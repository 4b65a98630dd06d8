"""The SDK's side of messages handed over as files (`MessageHeader.shared_file`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from flame._dataplane_client import DataPlaneClient
from flame.dataplane.v1 import channel_pb2
from flame.dataplane.v1 import channel_service_pb2 as pb
from flame.wire.shared import SHARED_FILE_MIN_BYTES, make_shared_folder, write_file
from tests.sdk.fake_dataplane import FakeChannelService, FakeDataPlane

CHANNEL = "param"
SIZE = SHARED_FILE_MIN_BYTES


class SlowToFinish(FakeChannelService):
    """Hands every message over as a file, then takes a while to end the stream, as a
    loaded flamelet may: it counts the message delivered only once the stream ended."""

    def __init__(self, folder: Path) -> None:
        super().__init__([CHANNEL])
        self.folder = folder
        self.delivered = threading.Event()

    async def JoinChannel(self, request: pb.JoinChannelRequest, context: Any) -> Any:
        response = await super().JoinChannel(request, context)
        response.shared_folder = str(self.folder)
        return response

    async def ReceiveMessage(  # type: ignore[override]
        self, request: pb.ReceiveMessageRequest, context: Any
    ) -> AsyncIterator[pb.ReceiveMessageResponse]:
        assert request.accept_shared_file
        path = write_file(self.folder, [b"w" * SIZE])
        header = channel_pb2.MessageHeader(
            channel=CHANNEL, end_ids=["peer"], total_size=SIZE, shared_file=str(path)
        )
        yield pb.ReceiveMessageResponse(header=header)
        await asyncio.sleep(0.3)
        self.delivered.set()


def test_the_sdk_takes_a_file_only_once_its_stream_ended(tmp_path: Path) -> None:
    folder = make_shared_folder(tmp_path)
    assert folder is not None
    service = SlowToFinish(folder)
    plane = FakeDataPlane([CHANNEL], service=service)
    client = DataPlaneClient(plane.socket_path, call_timeout=10)
    try:
        client.join(CHANNEL)
        received = client.receive(CHANNEL, ["peer"], timeout=10, on_timeout=TimeoutError)
        # Returning earlier would cancel the stream: the flamelet would queue it again.
        assert service.delivered.is_set()
        assert received is not None and bytes(received.data) == b"w" * SIZE
        assert list(folder.iterdir()) == []
    finally:
        client.close()
        plane.stop()
