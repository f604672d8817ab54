"""The npm `centrifuge` SDK's browser builds (`dist/centrifuge.js`, `dist/centrifuge.protobuf.js`)
in Debian's headless Chromium against Aether: connect, subscribe, publish and receive, then
disconnect, miss three publications and recover them on reconnect.

A small HTTP server of the test's serves the page and the bundle (so the browser sends an
Origin, which Aether's `allowed_origins` must accept) and takes the page's results; no browser
automation library is needed: Chromium runs the page, the page posts what happened. Chromium is
required (`apt-get install chromium`, which .ci/run does): without it the test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, make_config, running_server, token

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
  client.disconnect();
  await fetch('/publish', { method: 'POST' });
  subscribed = new Promise((r) => sub.once('subscribed', r));
  client.connect();
  results.second = fields(await subscribed);
  await waitFor(() => received.length >= 4);
  results.received = received;
  client.disconnect();
  await fetch('/result', { method: 'POST', body: JSON.stringify(results) });
}
main().catch((e) => fetch('/result', { method: 'POST',
                                      body: JSON.stringify({ error: String(e?.stack ?? e) }) }));
</script></body></html>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("tests/test_sdk_browser.py needs Chromium: `apt-get install chromium`", False)


@contextmanager
def page_server(srv: RunningServer, protobuf: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """The page, the bundle, a /publish that publishes three messages while the page's client
    is away, and /result where the page posts what happened."""
    done = threading.Event()
    state: dict[str, Any] = {}
    bundle = (DIST / ("centrifuge.protobuf.js" if protobuf else "centrifuge.js")).read_bytes()
    page = PAGE % {
        "protobuf": "true" if protobuf else "false", "url": json.dumps(srv.url),
        "token": json.dumps(token("42")), "channel": json.dumps(CHANNEL),
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
            if self.path == "/publish":
                node = srv.server.node

                async def publish() -> None:
                    for n in (1, 2, 3):
                        await node.publish(node.resolve(CHANNEL), raw_json({"n": n}))

                srv.acall(publish)
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


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_the_browser_build_subscribes_receives_and_recovers(protobuf: bool) -> None:
    browser = chromium()
    config = make_config({"server": {"allowed_origins": ["http://127.0.0.1:*"]}})
    with running_server(config) as srv, page_server(srv, protobuf) as (url, state):
        with tempfile.TemporaryDirectory() as profile:
            process = subprocess.Popen(
                [browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                finished = state["done"].wait(RESULT_TIMEOUT)
            finally:
                process.terminate()
                try:
                    _, stderr = process.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    _, stderr = process.communicate()
        assert finished, f"the page posted no result; Chromium said: {stderr.decode()[-2000:]}"
    result = state["result"]
    assert "error" not in result, result
    assert "Chrome" in result["user_agent"]
    assert result["first"] == {
        "recoverable": True, "recovered": False, "was_recovering": False, "offset": 0,
    }  # fmt: skip
    assert result["second"]["was_recovering"] is True
    assert result["second"]["recovered"] is True
    assert result["received"] == [{"data": {"n": n}, "offset": n + 1} for n in range(4)]
