"""WebSocket data frames built by hand: a server frame is unmasked, so it is a few header bytes
in front of the payload, and the same bytes can go to every subscriber. (Control frames, which are
rare, are wsproto's: `WebSocketTransport` asks its `Connection` for them.)"""

from __future__ import annotations

import operator
import struct

__all__ = ["binary_frame", "frame_for", "frames_for", "text_frame_header"]


# (payload, its frame); starts with the empty payload's frame.
_last_frame: tuple[bytes, bytes] = (b"", b"\x81\x00")


def frame_for(payload: bytes) -> bytes:
    """The text frame of `payload`. A broadcast hands the same bytes object to every subscriber,
    so the last frame is kept and reused when the same object comes again: one frame is built
    per publication, not per subscriber."""
    global _last_frame
    last_payload, last_frame = _last_frame
    if payload is last_payload:
        return last_frame
    frame = _frame(payload)
    _last_frame = (payload, frame)
    return frame


# (messages, their frames) of the last multi-message write, for the same reason.
_last_frames: tuple[tuple[bytes, ...], bytes] = ((), b"")


def frames_for(messages: list[bytes], per_frame: int) -> bytes:
    """The frames carrying `messages`, `per_frame` lines to a frame. Subscribers of the same
    channels that are flushed together have the same messages queued (the same objects): the
    bytes are built once and reused while the next connection's messages are identical."""
    global _last_frames
    if len(messages) == 1:
        return frame_for(messages[0])
    last_messages, last_frames = _last_frames
    if len(last_messages) == len(messages) and all(map(operator.is_, last_messages, messages)):
        return last_frames
    frames = b"".join(
        [
            _frame(b"\n".join(messages[start : start + per_frame]))
            for start in range(0, len(messages), per_frame)
        ]
    )
    # A copy: the caller's list may change after this (a connection's queue).
    _last_frames = (tuple(messages), frames)
    return frames


def _frame(payload: bytes) -> bytes:
    return text_frame_header(len(payload)) + payload


def binary_frame(payload: bytes) -> bytes:
    """The binary frame of `payload` (not cached: nothing of Aether's protocol is binary)."""
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
