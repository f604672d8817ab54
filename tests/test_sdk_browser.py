"""The npm `centrifuge` SDK's browser builds (`dist/centrifuge.js`, `dist/centrifuge.protobuf.js`)
in Debian's headless Chromium against Aether: connect, subscribe, publish and receive, then
disconnect, miss three publications and recover them on reconnect; and across a graceful restart
of a real `aether serve` process (the memory engine's history snapshot keeps the epoch), the
client reconnecting by itself and recovering what was published after the restart.

A small HTTP server of the test's serves the page and the bundle (so the browser sends an
Origin, which Aether's `allowed_origins` must accept) and takes the page's results; no browser
automation library is needed: Chromium runs the page, the page posts what happened. Chromium is
required (`apt-get install chromium`, which .ci/run does): without it the test fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SECRET, make_config, running_server, token
from ops_helpers import AetherProcess, free_base_port

from aether_trio.protocol.codec import raw_json

DIST = Path(__file__).parent / "js" / "node_modules" / "centrifuge" / "dist"
CHANNEL = "browser"
RESULT_TIMEOUT = 30.0

PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="/centrifuge.js"></script>
</head><body><script>
const PROTOBUF = %(protobuf)s;
const encode = (v) => PROTOBUF ? new TextEncoder().encode(JSON.stringify(v)) : v;
const decode = (d) => PROTOBUF ? JSON.parse(new TextDecoder().decode(d)) : d;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(check) { while (!check()) await sleep(10); }
function fields(ctx) {
  return { recoverable: ctx.recoverable, recovered: ctx.recovered,
           was_recovering: ctx.wasRecovering, offset: ctx.streamPosition?.offset ?? null };
}
async function main() {
  const client = new Centrifuge(%(url)s, { token: %(token)s, minReconnectDelay: 100,
                                           maxReconnectDelay: 300 });
  const sub = client.newSubscription(%(channel)s, { recoverable: true });
  const received = [];
  sub.on('publication', (ctx) => received.push({ data: decode(ctx.data), offset: ctx.offset }));
  const results = { user_agent: navigator.userAgent };
  let subscribed = new Promise((r) => sub.once('subscribed', r));
  sub.subscribe();
  client.connect();
  results.first = fields(await subscribed);
  await sub.publish(encode({ n: 0 }));
  await waitFor(() => received.length >= 1);
%(away)s
  results.second = fields(await subscribed);
  await waitFor(() => received.length >= 4);
  results.received = received;
  client.disconnect();
  await fetch('/result', { method: 'POST', body: JSON.stringify(results) });
}
main().catch((e) => fetch('/result', { method: 'POST',
                                      body: JSON.stringify({ error: String(e?.stack ?? e) }) }));
</script></body></html>"""


# How the page's client misses three publications: it disconnects itself, or the server restarts.
AWAY_RECONNECT = """  client.disconnect();
  await fetch('/publish', { method: 'POST' });
  subscribed = new Promise((r) => sub.once('subscribed', r));
  client.connect();"""
AWAY_RESTART = """  subscribed = new Promise((r) => sub.once('subscribed', r));
  await fetch('/restart', { method: 'POST' });"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("tests/test_sdk_browser.py needs Chromium: `apt-get install chromium`", False)


@contextmanager
def page_server(
    url: str, protobuf: bool, away: str, actions: dict[str, Callable[[], None]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The page (its client on `url`), the bundle, the `actions` the page posts to (e.g. a
    /publish that publishes three messages while the page's client is away), and /result where
    the page posts what happened."""
    done = threading.Event()
    state: dict[str, Any] = {}
    bundle = (DIST / ("centrifuge.protobuf.js" if protobuf else "centrifuge.js")).read_bytes()
    page = PAGE % {
        "protobuf": "true" if protobuf else "false", "url": json.dumps(url),
        "token": json.dumps(token("42")), "channel": json.dumps(CHANNEL), "away": away,
    }  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _answer(self, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/centrifuge.js":
                self._answer(bundle, "text/javascript")
            elif self.path == "/":
                self._answer(page.encode(), "text/html")
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path in actions:
                actions[self.path]()
                self._answer(b"ok")
            elif self.path == "/result":
                state["result"] = json.loads(body)
                done.set()
                self._answer(b"ok")
            else:
                self.send_error(404)

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    state["done"] = done
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}/", state
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)


def run_page(url: str, done: threading.Event) -> None:
    """Chromium on the page until it posts its result (or RESULT_TIMEOUT)."""
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            finished = done.wait(RESULT_TIMEOUT)
        finally:
            process.terminate()
            try:
                _, stderr = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
    assert finished, f"the page posted no result; Chromium said: {stderr.decode()[-2000:]}"


def check_result(result: dict[str, Any]) -> None:
    assert "error" not in result, result
    assert "Chrome" in result["user_agent"]
    assert result["first"] == {
        "recoverable": True, "recovered": False, "was_recovering": False, "offset": 0,
    }  # fmt: skip
    assert result["second"]["was_recovering"] is True
    assert result["second"]["recovered"] is True
    assert result["received"] == [{"data": {"n": n}, "offset": n + 1} for n in range(4)]


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_the_browser_build_subscribes_receives_and_recovers(protobuf: bool) -> None:
    config = make_config({"server": {"allowed_origins": ["http://127.0.0.1:*"]}})
    with running_server(config) as srv:
        node = srv.server.node

        async def publish() -> None:
            for n in (1, 2, 3):
                await node.publish(node.resolve(CHANNEL), raw_json({"n": n}))

        actions = {"/publish": lambda: srv.acall(publish)}
        with page_server(srv.url, protobuf, AWAY_RECONNECT, actions) as (url, state):
            run_page(url, state["done"])
    check_result(state["result"])


RESTART_CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
allowed_origins = ["http://127.0.0.1:*"]
shutdown_drain_seconds = 1.0
close_wait_seconds = 0.5

[http]
port = {http_port}

[token]
hmac_secret = "{secret}"

[admin]
data_dir = "{data}"

[engine]
persist_history = true

[api]
keys = [{{ name = "test", key = "{key}", roles = ["publisher"] }}]

[channel.without_namespace]
history_size = 100
history_ttl = 300.0
allow_recovery = true
allow_subscribe_for_client = true
allow_publish_for_client = true
"""


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_the_browser_build_recovers_across_a_server_restart(protobuf: bool, tmp_path: Path) -> None:
    """A graceful restart of the process (3001 to the page's client, the history snapshot
    written and restored with its epoch): the SDK reconnects by itself and recovers the three
    publications made right after the restart, or gets them live, exactly once either way."""
    base, key = free_base_port(2), "browser-test-key"
    config = tmp_path / "aether.toml"
    config.write_text(RESTART_CONFIG.format(
        port=base, http_port=base + 1, secret=SECRET, data=tmp_path / "data", key=key,
    ))  # fmt: skip
    process = AetherProcess(config, 1, tmp_path / "aether.log")  # ports + 1
    process.start()
    try:

        def restart() -> None:
            process.restart()
            for n in (1, 2, 3):
                answer = httpx.post(
                    f"http://127.0.0.1:{base + 2}/api/publish", headers={"X-API-Key": key},
                    json={"channel": CHANNEL, "data": {"n": n}}, timeout=10,
                )  # fmt: skip
                assert answer.status_code == 200, answer.text
                assert "error" not in answer.json(), answer.text

        ws_url = f"ws://127.0.0.1:{base + 1}/connection/websocket"
        with page_server(ws_url, protobuf, AWAY_RESTART, {"/restart": restart}) as (url, state):
            run_page(url, state["done"])
        assert re.search(
            r"history snapshot loaded from .*: 1 streams, 1 publications", process.log()
        )
    finally:
        process.kill()
    check_result(state["result"])
