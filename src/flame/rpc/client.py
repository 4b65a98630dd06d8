"""Client channels to Flame servers, with the same TLS options as the servers."""

from __future__ import annotations

import grpc

from flame.rpc.server import DEFAULT_MAX_MESSAGE_BYTES
from flame.rpc.tls import ClientTls

__all__ = ["open_channel"]


def open_channel(
    target: str,
    *,
    tls: ClientTls | None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.aio.Channel:
    """Open an aio channel to `target` (`host:port` or `unix:PATH`); plaintext without `tls`."""
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)
