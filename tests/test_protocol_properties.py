"""Property-based tests of the sans-IO protocol layer: `decode_frame` and `Session.check`.

Whatever a peer sends, the protocol layer answers with its own `ProtocolError` (which the client
turns into a close with the table's code) or with commands of the declared shape; it never raises
anything else (an exception that escapes would be an "internal" failure of the connection). Valid
commands survive an encode/decode round trip, and the session follows its state table for any
sequence of commands.

Hypothesis runs derandomized (the same examples on every run, no example database), so CI is
stable; `max_examples` keeps the whole file to a few seconds.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aether_trio.protocol import messages as m
from aether_trio.protocol.codec import (
    MAX_UINT32,
    PONG,
    REQUESTS,
    Command,
    decode_frame,
    unstructure,
)
from aether_trio.protocol.codes import Disconnect
from aether_trio.protocol.errors import DisconnectError, ProtocolError
from aether_trio.protocol.session import Session

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = sorted(REQUESTS)

# --- strategies: JSON-ish text ------------------------------------------------------------------

# Text orjson can encode (no lone surrogates); the peer's frames are valid UTF-8 by then.
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
# Numbers beyond every fixed width, and the spellings JSON parsers disagree on.
NUMBER_TOKENS = st.sampled_from(
    ["1e400", "-1e400", "1E-400", "-0", "0.0", "123456789012345678901234567890", "-9" * 30,
     str(2**64), str(2**64 - 1), str(-(2**63) - 1), str(2**32), "4294967295", "1.0", "1e2"]
)  # fmt: skip
INTEGERS = st.integers(min_value=-(2**70), max_value=2**70)


class _Token:
    """A number spelled as is in the JSON text (`1e400`), which no Python value prints as."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _json_text(value: Any) -> str:
    """Serialize with integers of any size (orjson stops at 64 bits) and number tokens as is."""
    if isinstance(value, _Token):
        return value.text
    if isinstance(value, bool) or value is None:
        return orjson.dumps(value).decode()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "1e999"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return (
        "{"
        + ",".join(f"{orjson.dumps(k).decode()}:{_json_text(v)}" for k, v in value.items())
        + "}"
    )


SCALARS = (
    st.none()
    | st.booleans()
    | INTEGERS
    | st.floats(allow_nan=False)
    | TEXT
    | NUMBER_TOKENS.map(_Token)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
# Every request field name, so bodies often get a field right with a value of the wrong type.
FIELD_NAMES = st.sampled_from(
    sorted({field.name for cls in REQUESTS.values() for field in attrs.fields(cls)})
)
# A body shaped like a request: known field names with values of any type, nested requests too.
BODIES = st.dictionaries(FIELD_NAMES | TEXT, JSON_VALUES, max_size=6)
IDS = INTEGERS | st.sampled_from([0, 1, MAX_UINT32, MAX_UINT32 + 1, -1]) | SCALARS


@st.composite
def command_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object that looks like a command, often right, often wrong in one place."""
    command: dict[str, Any] = {}
    if draw(st.booleans()):
        command["id"] = draw(IDS)
    for method in draw(st.lists(st.sampled_from([*METHODS, "frobnicate"]), max_size=2)):
        command[method] = draw(BODIES | JSON_VALUES)
    if draw(st.booleans()):
        command.update(draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2)))
    return command


@st.composite
def near_commands(draw: st.DrawFn) -> dict[str, Any]:
    """A right id and one known method with an object body whose fields have values of any
    type (nested objects included: `subs`, `since`): what reaches the typed decoder."""
    method = draw(st.sampled_from(METHODS))
    body = draw(
        st.dictionaries(FIELD_NAMES, JSON_VALUES | st.dictionaries(TEXT, BODIES), max_size=4)
    )
    return {"id": draw(st.integers(1, MAX_UINT32)), method: body}


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


DEEP_LINES = st.builds(
    lambda depth, kind, wrap: (
        f'{{"id":1,"publish":{{"channel":"c","data":{_nested(depth, kind)}}}}}'
        if wrap
        else _nested(depth, kind)
    ),
    st.integers(min_value=1, max_value=3000),
    st.sampled_from(["list", "object"]),
    st.booleans(),
)
# Characters JSON is made of, so random text often gets close to parsing.
JSONISH_TEXT = st.text(
    st.sampled_from('{}[]":,0123456789-+.eE \\/ntrufalsbu\t\r\x00é😀') | st.characters(),
    max_size=80,
)
LINES = (
    near_commands().map(_json_text)
    | command_objects().map(_json_text)
    | JSON_VALUES.map(_json_text)
    | JSONISH_TEXT
    | DEEP_LINES
    | st.sampled_from(["", "{}", "null", "[]", '{"id":1}', '{"id":1,"connect":null}'])
)
FRAMES = st.builds(
    lambda lines, trailing: "\n".join(lines) + ("\n" if trailing else ""),
    st.lists(LINES, min_size=0, max_size=4),
    st.booleans(),
)


# --- any frame: a ProtocolError (3501) or well-formed commands ----------------------------------


def _check_decoded(frame: str | bytes) -> list[Command]:
    refusal: Disconnect | None
    try:
        commands = decode_frame(frame)
    except DisconnectError as exc:
        refusal = exc.disconnect
    else:
        refusal = None
    if refusal is not None:
        assert refusal is Disconnect.BAD_REQUEST  # decoding refuses with 3501 only
        return []
    for command in commands:
        assert command.method == PONG or command.method in REQUESTS
        assert 0 <= command.id <= MAX_UINT32
        if command.method == PONG:
            assert command.id == 0
            assert command.request is None
        else:
            assert isinstance(command.request, REQUESTS[command.method])
            assert command.id > 0 or command.method == "send"
    return commands


def _feed(commands: list[Command]) -> None:
    """Run `commands` through sessions in each state the way the client does; only
    ProtocolError may come out."""
    for start in ("new", "connected", "pinged"):
        session = Session()
        if start != "new":
            session.connected("client", "user")
        if start == "pinged":
            session.ping_sent()
        for command in commands:
            try:
                session.check(command)
            except ProtocolError:
                session.close()  # what the client does: close, and check nothing more
                break


@PROPERTIES
@given(FRAMES)
def test_any_text_frame_gives_commands_or_a_protocol_error(frame: str) -> None:
    _feed(_check_decoded(frame))


@PROPERTIES
@given(near_commands())
def test_any_field_values_give_a_request_or_a_protocol_error(command: dict[str, Any]) -> None:
    # One line per example: every one reaches the typed decoder of its method's request.
    _feed(_check_decoded(_json_text(command)))


@PROPERTIES
@given(st.binary(max_size=200) | FRAMES.map(lambda f: f.encode("utf-8", "surrogatepass")))
def test_any_bytes_frame_gives_commands_or_a_protocol_error(frame: bytes) -> None:
    _feed(_check_decoded(frame))


@PROPERTIES
@given(st.lists(JSONISH_TEXT | LINES, min_size=1, max_size=3), st.integers(0, 40))
def test_a_garbage_line_anywhere_fails_the_whole_frame(lines: list[str], position: int) -> None:
    good = '{"id":1,"presence":{"channel":"c"}}'
    garbage = next((line for line in lines if _is_garbage(line)), None)
    if garbage is None:
        reject()
    frame_lines = [good] * 3
    # An empty last line is the one trailing newline a frame may have: not garbage there.
    frame_lines.insert(position % (3 if garbage == "" else 4), garbage)
    with pytest.raises(DisconnectError) as refused:
        decode_frame("\n".join(frame_lines))
    assert refused.value.disconnect is Disconnect.BAD_REQUEST, garbage


def _is_garbage(line: str) -> bool:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "\n" not in line
    return not isinstance(value, dict)


# --- valid commands round-trip -----------------------------------------------------------------

SAFE_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
UINTS = st.integers(min_value=0, max_value=2**64 - 1)
PAYLOADS = st.recursive(
    st.none() | st.booleans() | SAFE_INTS | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
POSITIONS = st.builds(m.StreamPosition, offset=UINTS, epoch=TEXT)
SUBSCRIBES = st.builds(
    m.SubscribeRequest,
    channel=TEXT, token=TEXT, recover=st.booleans(), epoch=TEXT, offset=UINTS, data=PAYLOADS,
    positioned=st.booleans(), recoverable=st.booleans(), join_leave=st.booleans(), delta=TEXT,
    flag=SAFE_INTS,
)  # fmt: skip
REQUEST_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "connect": st.builds(
        m.ConnectRequest,
        token=TEXT,
        data=PAYLOADS,
        subs=st.dictionaries(TEXT, SUBSCRIBES, max_size=2),
        name=TEXT,
        version=TEXT,
        headers=st.dictionaries(TEXT, TEXT, max_size=2),
    ),
    "ping": st.just(m.PingRequest()),
    "subscribe": SUBSCRIBES,
    "unsubscribe": st.builds(m.UnsubscribeRequest, channel=TEXT),
    "publish": st.builds(m.PublishRequest, channel=TEXT, data=PAYLOADS),
    "presence": st.builds(m.PresenceRequest, channel=TEXT),
    "presence_stats": st.builds(m.PresenceStatsRequest, channel=TEXT),
    "history": st.builds(
        m.HistoryRequest,
        channel=TEXT,
        limit=SAFE_INTS,
        since=st.none() | POSITIONS,
        reverse=st.booleans(),
    ),
    "rpc": st.builds(m.RPCRequest, method=TEXT, data=PAYLOADS),
    "send": st.builds(m.SendRequest, data=PAYLOADS),
    "refresh": st.builds(m.RefreshRequest, token=TEXT),
    "sub_refresh": st.builds(m.SubRefreshRequest, channel=TEXT, token=TEXT),
}


def test_every_method_has_a_strategy() -> None:
    assert set(REQUEST_STRATEGIES) == set(REQUESTS)


@st.composite
def valid_commands(draw: st.DrawFn) -> Command:
    method = draw(st.sampled_from(METHODS))
    request = draw(REQUEST_STRATEGIES[method])
    low = 0 if method == "send" else 1
    return Command(draw(st.integers(low, MAX_UINT32)), method, request)


def _encode(command: Command) -> bytes:
    if command.method == PONG:
        return b"{}"
    body = unstructure(command.request)
    return orjson.dumps({"id": command.id, command.method: body} if command.id else {"send": body})


@PROPERTIES
@given(
    st.lists(valid_commands() | st.just(Command(0, PONG, None)), min_size=1, max_size=5),
    st.booleans(),
)
def test_valid_commands_round_trip(commands: list[Command], trailing_newline: bool) -> None:
    frame = b"\n".join(_encode(c) for c in commands) + (b"\n" if trailing_newline else b"")
    assert decode_frame(frame) == commands
    assert decode_frame(frame.decode()) == commands


# --- the session follows its state table for any command sequence -------------------------------

ALL_METHODS = [*METHODS, PONG]


def _command(method: str) -> Command:
    if method == PONG:
        return Command(0, PONG, None)
    return Command(0 if method == "send" else 1, method, REQUESTS[method]())


class SessionMachine(RuleBasedStateMachine):
    """A model of reference 1.4 / 2.1 / 5 next to the real `Session`."""

    def __init__(self) -> None:
        super().__init__()
        self.session = Session()
        self.state = "awaiting"
        self.connect_accepted = False
        self.ping_outstanding = False

    @rule(method=st.sampled_from(ALL_METHODS))
    def check(self, method: str) -> None:
        expected: bool | None  # None: a 3501
        if self.state == "closed":
            expected = False
        elif self.state == "awaiting":
            expected = True if method == "connect" else None
        elif method == "connect":
            expected = None
        elif method == PONG:
            expected = False if self.ping_outstanding else None
        else:
            expected = True
        result: bool | None
        refusal: Disconnect | None
        try:
            result = self.session.check(_command(method))
        except DisconnectError as exc:
            refusal = exc.disconnect
            result = None
        else:
            refusal = None
        assert refusal in (None, Disconnect.BAD_REQUEST)
        assert result == expected, (self.state, method)
        if result is None:
            self.session.close()
            self.state = "closed"
        elif method == "connect":
            self.connect_accepted = True
        elif method == PONG and self.state == "connected":
            self.ping_outstanding = False

    @precondition(lambda self: self.state == "awaiting" and self.connect_accepted)
    @rule()
    def connected(self) -> None:
        self.session.connected("client", "user")
        self.state = "connected"

    @rule()
    def ping_sent(self) -> None:
        self.session.ping_sent()
        self.ping_outstanding = True

    @rule()
    def close(self) -> None:
        self.session.close()
        self.state = "closed"

    @invariant()
    def observable_state_matches(self) -> None:
        assert self.session.is_connected == (self.state == "connected")
        assert self.session.pong_missing == (self.ping_outstanding and self.state == "connected")


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(PROPERTIES, max_examples=200, stateful_step_count=30)
