"""The per-connection state machine (reference 1.4, 2.1 and 5), driven by decoded commands only."""

from __future__ import annotations

import pytest

from aether_trio.protocol.codec import Command, decode_frame
from aether_trio.protocol.codes import Disconnect
from aether_trio.protocol.errors import DisconnectError
from aether_trio.protocol.session import Session, SessionState

# One real decoded command per method, as the codec hands them to the session.
LINES = {
    "connect": '{"id":1,"connect":{"name":"js"}}',
    "subscribe": '{"id":2,"subscribe":{"channel":"news","flag":1}}',
    "unsubscribe": '{"id":3,"unsubscribe":{"channel":"news"}}',
    "publish": '{"id":4,"publish":{"channel":"news","data":{"x":1}}}',
    "presence": '{"id":5,"presence":{"channel":"news"}}',
    "presence_stats": '{"id":6,"presence_stats":{"channel":"news"}}',
    "history": '{"id":7,"history":{"channel":"news","limit":10}}',
    "ping": '{"id":8,"ping":{}}',
    "send": '{"send":{"data":"hi"}}',
    "rpc": '{"id":9,"rpc":{"method":"m"}}',
    "refresh": '{"id":10,"refresh":{"token":"t"}}',
    "sub_refresh": '{"id":11,"sub_refresh":{"channel":"news","token":"t"}}',
    "pong": "{}",
}


def cmd(method: str) -> Command:
    (command,) = decode_frame(LINES[method])
    assert command.method == method
    return command


NON_CONNECT = [name for name in LINES if name != "connect"]
DISPATCHED_AFTER_CONNECT = [name for name in NON_CONNECT if name != "pong"]


def _assert_bad_request(session: Session, command: Command) -> None:
    with pytest.raises(DisconnectError) as info:
        session.check(command)
    assert info.value.disconnect is Disconnect.BAD_REQUEST


def connected_session(client_id: str = "c-1", user: str = "42") -> Session:
    session = Session()
    assert session.check(cmd("connect")) is True
    session.connected(client_id, user)
    return session


def test_new_session_awaits_connect() -> None:
    session = Session()
    assert session.state is SessionState.AWAITING_CONNECT
    assert not session.is_connected
    assert not session.pong_missing
    assert session.client_id == ""
    assert session.user == ""


def test_connect_is_allowed_first_and_state_moves_only_on_connected() -> None:
    session = Session()
    assert session.check(cmd("connect")) is True
    # The caller may still fail the connect (token error reply): nothing changed yet.
    assert session.state is SessionState.AWAITING_CONNECT
    assert not session.is_connected
    session.connected("client-uuid", "42")
    # mypy keeps `session.state` narrowed to AWAITING_CONNECT across the call that changes it.
    assert session.state is SessionState.CONNECTED  # type: ignore[comparison-overlap]
    assert session.is_connected
    assert (session.client_id, session.user) == ("client-uuid", "42")


def test_anonymous_connect_keeps_empty_user() -> None:
    session = connected_session("c-anon", "")
    assert session.is_connected
    assert (session.client_id, session.user) == ("c-anon", "")


@pytest.mark.parametrize("method", NON_CONNECT)
def test_before_connect_only_connect_is_allowed(method: str) -> None:
    session = Session()
    _assert_bad_request(session, cmd(method))
    assert session.state is SessionState.AWAITING_CONNECT


def test_pong_before_connect_is_bad_request_even_after_a_ping() -> None:
    session = Session()
    session.ping_sent()
    assert not session.pong_missing  # no pong is due before connect
    _assert_bad_request(session, cmd("pong"))


@pytest.mark.parametrize("method", DISPATCHED_AFTER_CONNECT)
def test_after_connect_commands_are_dispatched(method: str) -> None:
    session = connected_session()
    assert session.check(cmd(method)) is True
    assert session.check(cmd(method)) is True  # repeatable: the session does not track channels
    assert session.state is SessionState.CONNECTED


def test_second_connect_is_bad_request() -> None:
    session = connected_session()
    _assert_bad_request(session, cmd("connect"))


@pytest.mark.parametrize("state", ["connected", "closed"])
def test_connected_twice_is_a_programming_error(state: str) -> None:
    session = connected_session()
    if state == "closed":
        session.close()
    with pytest.raises(RuntimeError):
        session.connected("c-2", "43")
    assert (session.client_id, session.user) == ("c-1", "42")


def test_js_batch_connect_then_subscribe_in_one_frame() -> None:
    # centrifuge-js sends connect and its subscribes in one frame before any reply (reference 1.3).
    session = Session()
    first, second = decode_frame(LINES["connect"] + "\n" + LINES["subscribe"])
    assert session.check(first) is True
    session.connected("c-1", "42")
    assert session.check(second) is True


def test_pong_without_outstanding_ping_is_bad_request() -> None:
    session = connected_session()
    assert not session.pong_missing
    _assert_bad_request(session, cmd("pong"))


def test_pong_answers_one_ping_exactly_once() -> None:
    session = connected_session()
    session.ping_sent()
    assert session.pong_missing
    assert session.check(cmd("pong")) is False  # handled: nothing to dispatch
    assert not session.pong_missing
    _assert_bad_request(session, cmd("pong"))


def test_two_pings_without_pong_accept_only_one_pong() -> None:
    # Upstream tracks "a ping is outstanding", not a count: one pong clears it.
    session = connected_session()
    session.ping_sent()
    session.ping_sent()
    assert session.check(cmd("pong")) is False
    assert not session.pong_missing
    _assert_bad_request(session, cmd("pong"))


def test_ping_pong_cycles() -> None:
    session = connected_session()
    for _ in range(3):
        session.ping_sent()
        assert session.pong_missing
        assert session.check(cmd("subscribe")) is True  # other traffic does not clear the ping
        assert session.pong_missing
        assert session.check(cmd("pong")) is False
        assert not session.pong_missing


@pytest.mark.parametrize(
    ("connect", "ping", "close", "missing"),
    [
        (False, False, False, False),
        (False, True, False, False),
        (True, False, False, False),
        (True, True, False, True),
        (True, True, True, False),
        (False, True, True, False),
    ],
)
def test_pong_missing(connect: bool, ping: bool, close: bool, missing: bool) -> None:
    session = connected_session() if connect else Session()
    if ping:
        session.ping_sent()
    if close:
        session.close()
    assert session.pong_missing is missing


@pytest.mark.parametrize("connect_first", [False, True])
@pytest.mark.parametrize("method", list(LINES))
def test_closed_session_absorbs_every_command(connect_first: bool, method: str) -> None:
    session = connected_session() if connect_first else Session()
    session.close()
    assert session.state is SessionState.CLOSED
    assert not session.is_connected
    assert session.check(cmd(method)) is False
    assert session.state is SessionState.CLOSED


def test_close_is_idempotent() -> None:
    session = connected_session()
    session.close()
    session.close()
    assert session.state is SessionState.CLOSED
    assert session.check(cmd("connect")) is False
