"""The upgrade request's fast path (aether_trio/transport/upgrade.py) against h11 and wsproto:
wherever the fast path answers, it must answer what `H11Handshake` does (the same target,
headers and offered subprotocols, the same 101 bytes); everywhere else it must step aside.
Generated requests (every combination of the headers' usual variants) and random byte
mutations of real SDKs' requests; the seed is fixed so a failure reproduces."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from aether_trio.transport import HandshakeFailed, read_request
from aether_trio.transport.upgrade import accept_response, parse_upgrade

# What the SDKs and browsers send (header order and case as they do).
CENTRIFUGE_JS = (
    b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: Upgrade\r\n"
    b"Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0\r\n"
    b"Upgrade: websocket\r\nOrigin: http://127.0.0.1:8000\r\nSec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Sec-WebSocket-Protocol: centrifuge-protobuf\r\n\r\n"
)
PYTHON_WEBSOCKETS = (
    b"GET /connection/websocket?cf_protocol=json HTTP/1.1\r\nHost: localhost:8000\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
    b"User-Agent: Python/3.11 websockets/14.1\r\n\r\n"
)
SDK_REQUESTS = (CENTRIFUGE_JS, PYTHON_WEBSOCKETS)


def h11_outcome(head: bytes) -> Request | str:
    """What wsproto makes of `head`: its Request, or why not."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(head)
    except RemoteProtocolError:
        return "refused"
    except UnicodeError:
        return "unicode"
    for event in handshake.events():
        if isinstance(event, Request):
            return event
    return "incomplete"


def h11_accept(head: bytes, subprotocol: str | None) -> bytes:
    handshake = H11Handshake(ConnectionType.SERVER)
    handshake.receive_data(head)
    list(handshake.events())
    return handshake.send(AcceptConnection(subprotocol=subprotocol))


def agree(head: bytes) -> bool:
    """Assert the fast path agrees with wsproto on `head`; whether it took the request."""
    fast = parse_upgrade(head)
    if fast is None:
        return False
    slow = h11_outcome(head)
    assert isinstance(slow, Request), (head, slow)
    assert fast.target == slow.target
    assert fast.headers == list(slow.extra_headers)
    assert fast.subprotocols == list(slow.subprotocols)
    for subprotocol in [None, *slow.subprotocols[:2]]:
        if subprotocol == "":
            continue
        assert accept_response(fast, subprotocol) == h11_accept(head, subprotocol)
    return True


def test_the_sdks_requests_take_the_fast_path() -> None:
    for head in SDK_REQUESTS:
        assert agree(head), head


# Each header's variants: absent (None), the usual value, and the values that test each check.
VARIANTS: dict[bytes, list[bytes | None]] = {
    b"Host": [b"example.com", None, b"ex\xc3\xa4mple.com", b"xn--zz", b"  spaced \t"],
    b"Connection": [b"Upgrade", None, b"keep-alive, Upgrade", b"keep-alive", b"upgrade\x80"],
    b"Upgrade": [b"websocket", None, b"WebSocket", b"h2c"],
    b"Sec-WebSocket-Version": [b"13", None, b"8", b" 13 "],
    b"Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ==", None, b""],
    b"Sec-WebSocket-Protocol": [None, b"centrifuge-json, centrifuge-protobuf", b"\xff"],
}
REQUEST_LINES = [
    b"GET /connection/websocket?format=json HTTP/1.1",
    b"POST /connection/websocket HTTP/1.1",
    b"GET /connection/websocket HTTP/1.0",
    b"get / HTTP/1.1",
    b"GET /caf\xc3\xa9 HTTP/1.1",
]


def build(line: bytes, headers: list[tuple[bytes, bytes]], eol: bytes = b"\r\n") -> bytes:
    return line + eol + b"".join(name + b": " + value + eol for name, value in headers) + eol


def test_every_combination_of_header_variants_agrees_with_wsproto() -> None:
    taken = 0
    names = list(VARIANTS)
    for line in REQUEST_LINES:
        for values in itertools.product(*(VARIANTS[name] for name in names)):
            headers = [(n, v) for n, v in zip(names, values, strict=True) if v is not None]
            taken += agree(build(line, headers))
    # Only the first request line with the usual Host, Connection (two of them), Upgrade
    # (two), Version, Key (two: an empty key passes wsproto too) and Protocol (two) is
    # ordinary: 2 * 2 * 1 * 2 * 2 (spaced Host) ... counted, not guessed: it must not be zero.
    assert taken > 0


def test_extra_headers_duplicates_and_line_ends_agree_with_wsproto() -> None:
    base = [
        (b"Host", b"h"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    extras = [
        [],
        [(b"Host", b"h2")],  # two Hosts: h11/wsproto decide
        [(b"Content-Length", b"0")],
        [(b"Transfer-Encoding", b"chunked")],
        [(b"Connection", b"close")],  # the last Connection header counts
        [(b"X-Obs-Text", b"caf\xc3\xa9")],
        [(b"Cookie", b"a=1; b=2"), (b"COOKIE", b"c=3")],
        [(b"Sec-WebSocket-Version", b"12")],
    ]
    for extra in extras:
        for eol in (b"\r\n", b"\n"):
            agree(build(b"GET /c HTTP/1.1", base + extra, eol))
    assert agree(build(b"GET /c HTTP/1.1", base))


@pytest.mark.parametrize("seed", range(4))
def test_random_mutations_of_sdk_requests_agree_with_wsproto(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = b" \t\r\n:,;=/?-_aAzZ09\x00\x01\x7f\x80\xff"
    taken = 0
    for _ in range(3000):
        head = bytearray(rng.choice(SDK_REQUESTS))
        body_end = len(head) - 4  # keep the blank line that ends the head
        for _edit in range(rng.randint(1, 3)):
            at = rng.randrange(body_end)
            kind = rng.randrange(3)
            if kind == 0:
                head[at] = rng.choice(alphabet)
            elif kind == 1:
                head.insert(at, rng.choice(alphabet))
            else:
                del head[at]
            body_end = len(head) - 4
        taken += agree(bytes(head))
    assert taken > 100  # most single-byte edits inside a value keep the request ordinary


async def test_a_head_split_over_reads_is_parsed_by_h11_and_accepted_alike() -> None:
    """A head that arrives in pieces is h11's from the first piece (it refuses a broken request
    line before the rest arrives); the fast path's and h11's accepts read the same."""
    for head in SDK_REQUESTS:
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:

            async def send_in_two(h: bytes = head, c: trio.abc.Stream = client) -> None:
                await c.send_all(h[:20])
                await trio.testing.wait_all_tasks_blocked()
                await c.send_all(h[20:])

            nursery.start_soon(send_in_two)
            request = await read_request(server, max_message_size=1 << 16)
        slow = h11_outcome(head)
        assert isinstance(slow, Request)
        assert request.path == slow.target
        assert request.headers == list(slow.extra_headers)
        assert request.subprotocols == list(slow.subprotocols)


@pytest.mark.parametrize(
    "header",
    [b"Host: xn--zz", b"Host: xn--a.example", b"Connection: up\xe9grade"],
)
async def test_a_header_wsproto_cannot_decode_is_refused_with_400(header: bytes) -> None:
    """wsproto decodes Host as IDNA and the comma lists as ASCII without catching the error:
    the request gets 400 and counts as bad_request instead of failing the connection's task."""
    head = build(
        b"GET /c HTTP/1.1",
        [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", b"k"),
            (b"Sec-WebSocket-Version", b"13"),
        ],
    ).replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n")
    assert parse_upgrade(head) is None
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(head)
    with pytest.raises(HandshakeFailed) as failed:
        await read_request(server, max_message_size=1 << 16)
    assert failed.value.reason == "bad_request"
    assert (await client.receive_some()).startswith(b"HTTP/1.1 400 ")


async def _answered(head: bytes) -> tuple[Any, trio.abc.Stream]:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(head)
    request = await read_request(server, max_message_size=1 << 16)
    return request, client


def _reference_reject(head: bytes, status: int, body: bytes) -> bytes:
    from wsproto.events import RejectConnection, RejectData

    handshake = H11Handshake(ConnectionType.SERVER)
    handshake.receive_data(head)
    list(handshake.events())
    headers = [(b"Content-Length", str(len(body)).encode())]
    data = handshake.send(RejectConnection(status_code=status, headers=headers, has_body=True))
    return data + handshake.send(RejectData(data=body))


# A request h11 takes and the fast path leaves to it: bare LF line ends.
BARE_LF = PYTHON_WEBSOCKETS.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("head", [PYTHON_WEBSOCKETS, BARE_LF], ids=["fast", "h11"])
async def test_both_paths_accept_and_reject_as_wsproto_does(head: bytes) -> None:
    assert (parse_upgrade(head) is None) is (head is BARE_LF)
    request, client = await _answered(head)
    await request.accept()
    assert await client.receive_some() == h11_accept(head, None)
    request, client = await _answered(head)
    await request.reject(404, body=b"not found\n")
    assert await client.receive_some() == _reference_reject(head, 404, b"not found\n")


async def test_a_subprotocol_that_was_not_offered_cannot_be_accepted() -> None:
    from wsproto.utilities import LocalProtocolError

    request, _client = await _answered(CENTRIFUGE_JS)
    assert request.subprotocols == ["centrifuge-protobuf"]
    with pytest.raises(LocalProtocolError, match="unexpected subprotocol"):
        await request.accept("centrifuge-json")
    with pytest.raises(RuntimeError, match="answered already"):
        await request.accept()
