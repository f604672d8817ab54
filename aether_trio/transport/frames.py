"""WebSocket data frames built by hand: a server frame is unmasked, so it is a few header bytes
in front of the payload. (Control frames, which are rare, are wsproto's: `WebSocketTransport`
asks its `Connection` for them.) Pure functions: what is built once and shared between
connections is decided by the writer (connection/writer.py), not cached here."""

from __future__ import annotations

import struct

__all__ = ["binary_frame", "binary_frames", "text_frame_header", "text_frames"]


def text_frames(messages: list[bytes], per_frame: int) -> bytes:
    """The text frames carrying `messages`, `per_frame` newline-separated lines to a frame."""
    if len(messages) == 1:
        return _text_frame(messages[0])
    return b"".join(
        [
            _text_frame(b"\n".join(messages[start : start + per_frame]))
            for start in range(0, len(messages), per_frame)
        ]
    )


def binary_frames(messages: list[bytes], per_frame: int) -> bytes:
    """The binary frames carrying `messages` (length-delimited Protobuf replies, which
    concatenate), `per_frame` to a frame."""
    if len(messages) == 1:
        return binary_frame(messages[0])
    return b"".join(
        [
            binary_frame(b"".join(messages[start : start + per_frame]))
            for start in range(0, len(messages), per_frame)
        ]
    )


def _text_frame(payload: bytes) -> bytes:
    return text_frame_header(len(payload)) + payload


def binary_frame(payload: bytes) -> bytes:
    """The binary frame of `payload`."""
    return _header(0x82, len(payload)) + payload


def text_frame_header(length: int) -> bytes:
    """RFC 6455 5.2 header of a final, unmasked text frame carrying `length` bytes."""
    return _header(0x81, length)


def _header(first: int, length: int) -> bytes:
    # `first`: FIN + opcode; the second byte's mask bit stays 0 (a server's frames are unmasked).
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)
