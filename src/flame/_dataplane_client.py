"""The SDK's end of ChannelService, and the standalone data plane.

`connect` returns a synchronous gRPC client of the ChannelService the task's flamelet
serves on the Unix socket named by `FLAME_DATAPLANE_SOCKET`. Without that variable
(`python trainer/main.py config.json`, no control plane) it first starts the flamelet's
bridge in this process, on a thread with its own event loop, on a temporary socket, and
then talks to it exactly as to a flamelet.

Every call has a deadline. Failures become the SDK's typed errors: the ErrorInfo reason
decides, then the status code (DEADLINE_EXCEEDED is the operation's timeout error).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc

from flame.dataplane.v1 import channel_pb2, channel_service_pb2, channel_service_pb2_grpc
from flame.end import End
from flame.errors import (
    ChannelNotFoundError,
    ChannelNotJoinedError,
    DataPlaneError,
    EndLeftError,
    EndNotFoundError,
    FlameSDKError,
    MessageError,
)
from flame.rpc.errors import error_details
from flame.rpc.server import DEFAULT_MAX_MESSAGE_BYTES
from flame.wire import DEFAULT_CHUNK_BYTES, EncodedMessage, iter_chunks
from flame.wire.shared import SharedFileError, SharedFileWriter, map_file, shared_file_fits

if TYPE_CHECKING:
    from flame.flamelet.dataplane import DataPlane

__all__ = [
    "SHARED_FILES_ENV",
    "SOCKET_ENV",
    "DataPlaneClient",
    "Received",
    "before_thread_shutdown",
    "connect",
]

SOCKET_ENV: Final = "FLAME_DATAPLANE_SOCKET"
# "0" keeps every message on the chunk streams, never in shared files.
SHARED_FILES_ENV: Final = "FLAME_DATAPLANE_SHARED_FILES"
# How often a sender writing a shared file tells the flamelet how far it got.
_PROGRESS_BYTES: Final = 4 * 1024 * 1024
# ErrorInfo metadata key naming the end an END_LEFT or END_NOT_FOUND is about.
_END_KEY: Final = "end_id"
_T = TypeVar("_T")
# Builds the operation's own timeout error once the deadline passed.
TimeoutFactory = Callable[[], FlameSDKError]


@dataclass(frozen=True)
class Received:
    """One complete message as the flamelet delivered it."""

    end_id: str
    data: bytearray | memoryview
    receive_time: datetime


class DataPlaneClient:
    """ChannelService calls for one task; thread-safe.

    Args:
        socket_path: The Unix socket ChannelService listens on.
        call_timeout: Deadline of the calls that do not wait for peers, in seconds.
        standalone: The in-process data plane to stop on `close`, if this client owns one.

    Raises:
        DataPlaneError: Nothing answers on the socket within `call_timeout`.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        call_timeout: float,
        standalone: _StandalonePlane | None = None,
    ) -> None:
        self._target = f"unix:{os.fspath(socket_path)}"
        self._call_timeout = call_timeout
        self._standalone = standalone
        limits = [
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
        ]
        # Per joined channel, where the flamelet takes messages as files, if it does.
        self._shared_folders: dict[str, Path] = {}
        self._channel = grpc.insecure_channel(self._target, options=limits)
        self._stub = channel_service_pb2_grpc.ChannelServiceStub(self._channel)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=call_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise DataPlaneError(
                f"no ChannelService answers on {self._target} within {call_timeout:g} s"
            ) from None

    def join(self, channel: str) -> None:
        """Join `channel`; idempotent."""
        request = channel_service_pb2.JoinChannelRequest(channel=channel)
        response = self._unary(self._stub.JoinChannel, request, channel)
        folder = response.shared_folder
        if folder and os.environ.get(SHARED_FILES_ENV) != "0" and os.access(folder, os.W_OK):
            self._shared_folders[channel] = Path(folder)

    def leave(self, channel: str) -> None:
        """Leave `channel` once its pending messages are sent."""
        request = channel_service_pb2.LeaveChannelRequest(channel=channel)
        self._unary(self._stub.LeaveChannel, request, channel)

    def list_ends(self, channel: str) -> list[End]:
        """The current ends of `channel`, without properties."""
        request = channel_service_pb2.ListEndsRequest(channel=channel)
        response = self._unary(self._stub.ListEnds, request, channel)
        return [_end_from_proto(end) for end in response.ends]

    def wait_for_end(self, channel: str, timeout: float, on_timeout: TimeoutFactory) -> None:
        """Return once `channel` has at least one end; raise `on_timeout()` at the deadline."""
        request = channel_service_pb2.WatchEndsRequest(channel=channel)
        call = self._stub.WatchEnds(request, timeout=timeout)
        try:
            # The stream starts with the current ends: an end already there ends the wait.
            if any(event.joined for event in call):
                return
        except grpc.RpcError as err:
            raise _translate(err, channel, (), on_timeout) from None
        finally:
            _cancel(call)
        raise DataPlaneError(f"WatchEnds of channel {channel!r} ended before any end joined")

    def send(
        self,
        channel: str,
        message: EncodedMessage,
        *,
        end_ids: Sequence[str],
        timeout: float,
        on_timeout: TimeoutFactory,
    ) -> None:
        """Send `message` to `end_ids`, or to every end when `end_ids` is empty.

        A large message goes as one file the flamelet maps (see `flame.wire.shared`)
        when the flamelet offers a shared folder with room for it; otherwise the
        frame's segments are cut into chunks as they are sent, never joined whole.
        """
        header = channel_pb2.MessageHeader(
            channel=channel,
            end_ids=end_ids,
            broadcast=not end_ids,
            total_size=message.total_size,
        )
        shared = self._shared_writer(channel, message.total_size)
        body: Iterator[channel_service_pb2.SendMessageRequest]
        if shared is None:
            body = (
                channel_service_pb2.SendMessageRequest(chunk=bytes(chunk))
                for chunk in iter_chunks(message.segments(), DEFAULT_CHUNK_BYTES)
            )
        else:
            # Written as it is sent: the flamelet sends what is written meanwhile.
            header.shared_file = str(shared.path)
            body = (
                channel_service_pb2.SendMessageRequest(shared_file_written=written)
                for written in shared.write(message.segments(), _PROGRESS_BYTES)
            )
        requests = itertools.chain([channel_service_pb2.SendMessageRequest(header=header)], body)
        try:
            self._stub.SendMessage(requests, timeout=timeout)
        except grpc.RpcError as err:
            raise _translate(err, channel, end_ids, on_timeout) from None
        finally:
            if shared is not None:
                shared.close()

    def _shared_writer(self, channel: str, size: int) -> SharedFileWriter | None:
        """A file of the channel's shared folder for a message of `size` bytes, when
        worth it."""
        folder = self._shared_folders.get(channel)
        if folder is None or not shared_file_fits(folder, size):
            return None
        try:
            return SharedFileWriter(folder, size)
        except OSError:
            # No room after all (another writer took it): the chunk stream needs none.
            return None

    def receive(
        self,
        channel: str,
        end_ids: Sequence[str],
        *,
        timeout: float,
        on_timeout: TimeoutFactory,
        peek: bool = False,
    ) -> Received | None:
        """The next complete message from one of `end_ids`, in arrival order.

        With `peek`, return at once (None when no message is complete) and leave the
        message queued.
        """
        request = channel_service_pb2.ReceiveMessageRequest(
            channel=channel,
            end_ids=end_ids,
            no_wait=peek,
            peek=peek,
            accept_shared_file=channel in self._shared_folders,
        )
        call = self._stub.ReceiveMessage(request, timeout=timeout)
        try:
            return _read_message(iter(call), channel, self._shared_folders.get(channel))
        except grpc.RpcError as err:
            raise _translate(err, channel, end_ids, on_timeout) from None
        finally:
            _cancel(call)

    @property
    def in_process(self) -> bool:
        """True when the data plane runs in this process (standalone mode)."""
        return self._standalone is not None

    def close(self) -> None:
        """Close the connection, and stop the standalone data plane if there is one."""
        self._channel.close()
        if self._standalone is not None:
            self._standalone.stop(self._call_timeout)

    def _unary(self, method: Callable[..., _T], request: Any, channel: str) -> _T:
        def on_timeout() -> FlameSDKError:
            return DataPlaneError(
                f"the data plane did not answer on channel {channel!r} "
                f"within {self._call_timeout:g} s"
            )

        try:
            return method(request, timeout=self._call_timeout)
        except grpc.RpcError as err:
            raise _translate(err, channel, (), on_timeout) from None


def _cancel(call: grpc.RpcContext) -> None:
    # Ends a stream read only in part; a no-op once it completed.
    call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave `cancel` untyped


def _read_message(
    responses: Iterator[channel_service_pb2.ReceiveMessageResponse],
    channel: str,
    shared_folder: Path | None,
) -> Received | None:
    first = next(responses, None)
    if first is None:
        return None
    if first.WhichOneof("content") != "header" or len(first.header.end_ids) != 1:
        raise DataPlaneError(f"channel {channel!r}: a received message lacks its header")
    header = first.header
    if header.shared_file:
        # The stream must end before the file is taken: until then the flamelet may
        # still count the message undelivered, and queue it again.
        if next(responses, None) is not None:
            raise DataPlaneError(f"channel {channel!r}: chunks follow a shared file")
        return _map_shared(header, channel, shared_folder)
    # One buffer of the announced size, filled in place: decode then views it, no copy.
    buffer = bytearray(header.total_size)
    view, filled = memoryview(buffer), 0
    for response in responses:
        end = filled + len(response.chunk)
        if end > len(buffer):
            raise MessageError(channel, f"a message exceeds its {len(buffer)} bytes")
        view[filled:end] = response.chunk
        filled = end
    if filled != len(buffer):
        raise MessageError(channel, f"a message has {filled} of its {len(buffer)} bytes")
    return Received(header.end_ids[0], buffer, _receive_time(header))


def _map_shared(header: channel_pb2.MessageHeader, channel: str, folder: Path | None) -> Received:
    try:
        data = map_file(header.shared_file, header.total_size, folder=folder)
    except SharedFileError as exc:
        raise MessageError(channel, str(exc)) from None
    return Received(header.end_ids[0], data, _receive_time(header))


def _end_from_proto(end: channel_pb2.End) -> End:
    joined = end.join_time.ToDatetime(tzinfo=UTC) if end.HasField("join_time") else None
    return End(end.end_id, end.role, joined)


def _receive_time(header: channel_pb2.MessageHeader) -> datetime:
    if header.HasField("receive_time"):
        return header.receive_time.ToDatetime(tzinfo=UTC)
    return datetime.now(UTC)


def _translate(
    err: grpc.RpcError, channel: str, end_ids: Sequence[str], on_timeout: TimeoutFactory
) -> FlameSDKError:
    details = error_details(err)
    end_id = details.metadata.get(_END_KEY) or (end_ids[0] if len(end_ids) == 1 else "")
    reason = details.reason
    if reason == "END_LEFT":
        return EndLeftError(channel, end_id, "left the channel")
    if reason == "END_NOT_FOUND":
        return EndNotFoundError(channel, end_id, "is not on the channel")
    if reason == "CHANNEL_NOT_JOINED":
        return ChannelNotJoinedError(channel, "is not joined")
    if reason == "CHANNEL_NOT_FOUND":
        return ChannelNotFoundError(channel, "is not in the task configuration")
    if reason in ("MESSAGE_INVALID", "MESSAGE_TOO_LARGE"):
        return MessageError(channel, details.message)
    if details.code == grpc.StatusCode.DEADLINE_EXCEEDED or reason == "DEADLINE_EXCEEDED":
        return on_timeout()
    return DataPlaneError(
        f"channel {channel!r}: the data plane failed: {details.code.name} {details.message}"
    )


class _StandalonePlane:
    """The flamelet's bridge, run in this process on a thread with its own event loop."""

    def __init__(self, config: Mapping[str, Any], *, start_timeout: float) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="flame-"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="flame-dataplane", daemon=True
        )
        self._thread.start()
        try:
            self._plane = self._run(_start_bridge(config, self._folder), start_timeout)
        except Exception as exc:
            self._shutdown(start_timeout)
            raise DataPlaneError(f"the standalone data plane did not start: {exc!r}") from exc
        self.socket_path = Path(self._plane.socket_path)

    def stop(self, timeout: float) -> None:
        """Stop the bridge, then the loop and its thread."""
        try:
            self._run(self._plane.stop(), timeout)
        finally:
            self._shutdown(timeout)

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _shutdown(self, timeout: float) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
        shutil.rmtree(self._folder, ignore_errors=True)


async def _start_bridge(config: Mapping[str, Any], folder: Path) -> DataPlane:
    # Imported here: only standalone runs need the flamelet's bridge and its MQTT client.
    from flame.flamelet.dataplane import start_bridge

    return await start_bridge(copy.deepcopy(dict(config)), socket_path=folder / "channel.sock")


def before_thread_shutdown(callback: Callable[[], object]) -> None:
    """Call `callback` once the main thread ends, before the interpreter joins threads.

    `atexit` is too late for the standalone data plane: by then `concurrent.futures`
    refuses new work, and the bridge needs its thread pool to leave its channels. This
    is CPython's hook for running before that (`concurrent.futures` registers its own
    with it); hooks run in reverse order, so importing that module first puts ours ahead.
    """
    import concurrent.futures.thread  # noqa: F401

    threading._register_atexit(callback)  # type: ignore[attr-defined]


def connect(
    config: Mapping[str, Any],
    *,
    socket_path: str | os.PathLike[str] | None,
    call_timeout: float,
) -> DataPlaneClient:
    """A client of the task's ChannelService.

    Args:
        config: The task configuration JSON object, for the standalone data plane.
        socket_path: The socket to use; None means `$FLAME_DATAPLANE_SOCKET`, and
            without that a standalone data plane started here.
        call_timeout: Deadline of the calls that do not wait for peers, and of starting
            the standalone data plane, in seconds.

    Raises:
        DataPlaneError: The data plane cannot be reached or started.
    """
    path = socket_path or os.environ.get(SOCKET_ENV)
    if path:
        return DataPlaneClient(path, call_timeout=call_timeout)
    plane = _StandalonePlane(config, start_timeout=call_timeout)
    try:
        return DataPlaneClient(plane.socket_path, call_timeout=call_timeout, standalone=plane)
    except DataPlaneError:
        plane.stop(call_timeout)
        raise
