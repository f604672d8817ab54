"""The engine's own compact encoding of publications and client infos, and of what travels on
PUB/SUB. Nothing here is seen by clients: it only has to round-trip the domain objects exactly.

A value is a list of byte strings written as `<len>,<len>,...;<bytes><bytes>...` (lengths in
decimal ASCII). The Lua scripts read one thing from it: a client info's first part is its user
(presence counts users), so a `ClientInfo` always starts with the user's length.

    ClientInfo     user, client, conn_info, chan_info
    Publication    a flag byte (`i`: with info, `-`: without), then data [, the info's four
                   parts], then tag keys and values alternating
    PUB/SUB        `p<offset>:<publication>` (offset 0 without history; the publish script
                   writes the prefix), `j<client info>`, `l<client info>`
"""

from __future__ import annotations

from ...protocol.messages import ClientInfo, Publication, RawJSON

__all__ = [
    "CodecError",
    "decode_info",
    "decode_parts",
    "decode_publication",
    "encode_info",
    "encode_parts",
    "encode_publication",
]


class CodecError(ValueError):
    """Bytes that are not one of our encodings (another program's keys or messages)."""


def encode_parts(parts: list[bytes]) -> bytes:
    head = ",".join([str(len(p)) for p in parts]).encode()
    return head + b";" + b"".join(parts)


def decode_parts(raw: bytes) -> list[bytes]:
    head, sep, body = raw.partition(b";")
    if not sep:
        raise CodecError("no header")
    parts, at = [], 0
    try:
        for length in head.split(b",") if head else ():
            parts.append(body[at : at + int(length)])
            at += int(length)
    except ValueError:
        raise CodecError("bad header") from None
    if at != len(body):
        raise CodecError("lengths do not match the body")
    return parts


def _info_parts(info: ClientInfo) -> list[bytes]:
    return [info.user.encode(), info.client.encode(), info.conn_info, info.chan_info]


def encode_info(info: ClientInfo) -> bytes:
    return encode_parts(_info_parts(info))


def _info(parts: list[bytes]) -> ClientInfo:
    user, client, conn_info, chan_info = parts
    return ClientInfo(user.decode(), client.decode(), RawJSON(conn_info), RawJSON(chan_info))


def decode_info(raw: bytes) -> ClientInfo:
    parts = decode_parts(raw)
    if len(parts) != 4:
        raise CodecError("a client info has four parts")
    return _info(parts)


def encode_publication(pub: Publication) -> bytes:
    """Everything but the offset, which is the stream entry's id or the PUB/SUB prefix."""
    parts: list[bytes] = [pub.data]
    if pub.info is not None:
        parts += _info_parts(pub.info)
    if pub.tags:
        for key, value in pub.tags.items():
            parts += [key.encode(), value.encode()]
    return (b"i" if pub.info is not None else b"-") + encode_parts(parts)


def decode_publication(raw: bytes, offset: int) -> Publication:
    flag, parts = raw[:1], decode_parts(raw[1:])
    info_parts = 4 if flag == b"i" else 0
    if flag not in (b"i", b"-") or len(parts) < 1 + info_parts or (len(parts) - 1 - info_parts) % 2:
        raise CodecError("not a publication")
    info = _info(parts[1:5]) if info_parts else None
    rest = parts[1 + info_parts :]
    tags = {rest[i].decode(): rest[i + 1].decode() for i in range(0, len(rest), 2)}
    return Publication(RawJSON(parts[0]), info, offset, tags or None)
