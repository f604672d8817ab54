"""The real npm `centrifuge` SDK (centrifuge-js 5.x on Node, over the `ws` package) against Aether.

`tests/js/scenario.mjs` drives the SDK and prints what happened as JSON lines; these tests run it
against `running_server` and assert on those lines, once with the SDK's default build (JSON) and
once with its Protobuf build (`centrifuge/build/protobuf`, subprotocol `centrifuge-protobuf`).
The session fixture installs the pinned npm
packages (`npm ci` from the committed lock) when `tests/js/node_modules` lacks them. Node and npm
are required: without them the tests fail, they are not skipped.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from centrifuge.protocol import client_pb2 as sdk_pb
from conftest import make_config, running_server, token
from google.protobuf.json_format import MessageToDict

from aether_trio.auth.tokens import mint_token

JS_DIR = Path(__file__).parent / "js"
SCENARIO = JS_DIR / "scenario.mjs"
NPM_TIMEOUT = 300
SCENARIO_TIMEOUT_MS = 20_000
CHANNEL = "js_chat"


def _installed(package: str) -> bool:
    return (JS_DIR / "node_modules" / package / "package.json").is_file()


@pytest.fixture(scope="session")
def node() -> str:
    """Path of `node`, after making sure the pinned npm packages are installed in tests/js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "tests/test_sdk_js.py needs Node.js >= 20 and npm on PATH to run the real npm "
            f"`centrifuge` SDK (found node={node!r}, npm={npm!r}); install them, e.g. "
            "`apt-get install nodejs npm`",
            pytrace=False,
        )
    if not (_installed("centrifuge") and _installed("ws")):
        lock = JS_DIR / "package-lock.json"
        command = [npm, "ci" if lock.is_file() else "install", "--no-audit", "--no-fund"]
        try:
            done = subprocess.run(
                command, cwd=JS_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"`{' '.join(command)}` in {JS_DIR} took more than {NPM_TIMEOUT} s", pytrace=False
            )
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` in {JS_DIR} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}",
                pytrace=False,
            )
    version = json.loads((JS_DIR / "node_modules/centrifuge/package.json").read_text())["version"]
    assert version.startswith("5."), f"expected centrifuge 5.x in tests/js, found {version}"
    return node


@pytest.fixture(scope="module", params=["json", "protobuf"])
def protocol(request: pytest.FixtureRequest) -> str:
    """The SDK's build: its default (JSON) or its Protobuf one."""
    value: str = request.param
    return value


def commands_of(frame: str) -> list[dict[str, Any]]:
    """The commands of a frame the SDK sent: JSON lines, or (recorded as "base64:...") varint
    length-delimited Protobuf Commands, read with centrifuge-python's generated classes (whose
    JSON form spells 64-bit integers as strings)."""
    if not frame.startswith("base64:"):
        return [json.loads(line) for line in frame.split("\n")]
    data, pos, commands = base64.b64decode(frame.removeprefix("base64:")), 0, []
    while pos < len(data):
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        command = sdk_pb.Command.FromString(data[pos : pos + length])
        commands.append(MessageToDict(command, preserving_proto_field_name=True))
        pos += length
    return commands


def run_scenario(node: str, url: str, scenario: str, **flags: str) -> list[dict[str, Any]]:
    """Run one scenario of scenario.mjs; return its events, failing on a non-zero exit."""
    command = [node, str(SCENARIO), "--scenario", scenario, "--url", url]
    command += ["--timeout", str(SCENARIO_TIMEOUT_MS), "--channel", CHANNEL]
    for name, value in flags.items():
        command += [f"--{name.replace('_', '-')}", value]
    done = subprocess.run(
        command, cwd=JS_DIR, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_MS / 1000 + 10
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, (
        f"scenario {scenario} exited {done.returncode}: {done.stdout}\n{done.stderr}"
    )
    assert events[-1] == {"event": "done"}, events
    return events


def event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The one event called `name` (its fields, without the name)."""
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, f"expected one {name!r} event in {events}"
    return {k: v for k, v in found[0].items() if k != "event"}


def compaction(protocol: str) -> dict[str, Any]:
    """The SDK asks for channel compaction on every subscribe (flag 1); the JSON scenarios run
    with it on, so their pushes carry the channel's id instead of its name. Not the Protobuf
    ones: centrifuge-js 5.8's Protobuf build decodes the int64 id as a Long object and compares
    it with `===`, so it drops every compacted push (README, compatibility table)."""
    allowed = protocol == "json"
    return {"channel": {"without_namespace": {"allow_channel_compaction": allowed}}}


@pytest.fixture(scope="module")
def pubsub(node: str, protocol: str) -> Iterator[list[dict[str, Any]]]:
    with running_server(make_config(compaction(protocol))) as server:
        yield run_scenario(node, server.url, "pubsub", token=token("42"), protocol=protocol)


def test_js_sends_connect_and_subscribe_in_one_frame(
    pubsub: list[dict[str, Any]], protocol: str
) -> None:
    frames = event(pubsub, "frames")
    # Reference 1.3: with the subscription created before connect(), the SDK writes connect and
    # subscribe into the first frame, before it has the connect reply...
    assert frames["sockets"] == 1
    lines = commands_of(frames["first"])
    assert [sorted(set(line) - {"id"}) for line in lines] == [["connect"], ["subscribe"]]
    assert lines[1]["subscribe"]["channel"] == CHANNEL
    assert lines[0]["id"] != lines[1]["id"]
    assert frames["count_before_publish"] == 1
    # ...and the server handled them in order: connected, then subscribed with a position.
    connected = event(pubsub, "connected")
    assert connected["transport"] == "websocket"
    assert len(connected["client"]) == 36
    subscribed = event(pubsub, "subscribed")
    assert subscribed["channel"] == CHANNEL
    assert subscribed["recoverable"] is True
    assert subscribed["positioned"] is True
    assert subscribed["was_recovering"] is False
    assert subscribed["offset"] == 0
    assert subscribed["epoch"]
    # Channel compaction (on for JSON only, see `compaction`): the later pushes carried the id.
    assert (subscribed["push_id"] > 0) is (protocol == "json")


def test_js_publish_reaches_the_publisher(pubsub: list[dict[str, Any]]) -> None:
    client = event(pubsub, "connected")["client"]
    assert event(pubsub, "published") == {"result": {}}
    assert event(pubsub, "publication") == {
        "data": {"text": "hello from js"},
        "offset": 1,
        "info": {"user": "42", "client": client},
    }


def test_js_history_presence_and_stats(pubsub: list[dict[str, Any]]) -> None:
    client = event(pubsub, "connected")["client"]
    epoch = event(pubsub, "subscribed")["epoch"]
    assert event(pubsub, "history") == {
        "publications": [
            {
                "data": {"text": "hello from js"},
                "offset": 1,
                "info": {"user": "42", "client": client},
            }
        ],
        "offset": 1,
        "epoch": epoch,
    }
    assert event(pubsub, "presence") == {
        "clients": [{"key": client, "client": client, "user": "42"}]
    }
    assert event(pubsub, "presence_stats") == {"num_clients": 1, "num_users": 1}
    assert event(pubsub, "disconnected") == {"code": 0, "reason": "disconnect called"}


def test_js_recovers_missed_publications_after_reconnect(node: str, protocol: str) -> None:
    with running_server(make_config(compaction(protocol))) as server:
        events = run_scenario(
            node, server.url, "recovery", token=token("42"), other_token=token("43"),
            protocol=protocol,
        )  # fmt: skip
    first = event(events, "subscribed")
    assert first["recoverable"] is True
    assert first["recovered"] is False
    assert [p["data"] for p in event(events, "live")["received"]] == [{"n": 0}]
    assert event(events, "disconnected") == {
        "code": 0,
        "reason": "disconnect called",
        "sub_state": "subscribing",
    }
    assert event(events, "missed_published") == {"count": 3}

    # The reconnect sends connect + a recovering subscribe in one frame, from offset 1.
    reconnect = event(events, "reconnect_frame")
    assert reconnect["sockets"] == 2
    connect_line, subscribe_line = commands_of(reconnect["first"])
    assert "connect" in connect_line
    assert subscribe_line["subscribe"]["recover"] is True
    assert int(subscribe_line["subscribe"]["offset"]) == 1
    assert subscribe_line["subscribe"]["epoch"] == first["epoch"]

    resubscribed = event(events, "resubscribed")
    assert resubscribed["was_recovering"] is True
    assert resubscribed["recovered"] is True
    assert resubscribed["epoch"] == first["epoch"]
    recovered = event(events, "recovered_publications")["publications"]
    assert [(p["data"], p["offset"], p["info"]["user"]) for p in recovered] == [
        ({"n": 1}, 2, "43"),
        ({"n": 2}, 3, "43"),
        ({"n": 3}, 4, "43"),
    ]
    after = event(events, "live_after_recovery")
    assert (after["data"], after["offset"]) == ({"n": 4}, 5)


def test_js_invalid_token_is_terminal(node: str, protocol: str) -> None:
    forged = mint_token("not-the-server-secret-0123456789abcdef0123", {"sub": "42"})
    with running_server(make_config()) as server:
        events = run_scenario(node, server.url, "invalid-token", token=forged, protocol=protocol)
    # Reference 7.2 / 14.5: close 3500 with its reason => `disconnected` 3500, no reconnect.
    assert event(events, "disconnected") == {"code": 3500, "reason": "invalid token"}
    assert event(events, "after_wait") == {
        "state": "disconnected",
        "sockets": 1,
        "connecting_after_disconnect": 0,
        "states": ["connecting", "disconnected"],
    }


def test_js_fossil_delta_publications_arrive_exact(node: str, protocol: str) -> None:
    overrides = compaction(protocol)
    overrides["channel"]["without_namespace"]["allowed_delta_types"] = ["fossil"]
    with running_server(make_config(overrides)) as server:
        events = run_scenario(node, server.url, "delta", token=token("42"), protocol=protocol)
    delta = event(events, "delta")
    doc = {"ticker": "AAPL", "history": list(range(60)), "note": "x" * 100}
    assert delta["received"] == [{"seq": n, **doc} for n in range(5)]
    # The SDK's own counters: the first publication in full, the four after it as deltas.
    assert (delta["negotiated"], delta["full"], delta["deltas"]) == (True, 1, 4)
