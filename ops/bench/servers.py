"""The servers under test: how to start each one on a free port, wait for it, stop it.

Every server runs in its own process with the open-files soft limit raised to the hard limit
(20,000 on the project's machines), listens on 127.0.0.1 only, and writes its output to a log
file that the report scans for errors. Aether gets a config written for the run: a fresh HS256
secret, permissive channels without namespace (subscribe and publish for clients), no history or
presence (a plain fan-out like the peers), rate and count limits off, and the HTTP API when the
code base has one; everything else at its defaults.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["SERVERS", "Server", "api_support", "free_port", "raise_nofile"]

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
NODE_DIR = PEERS / "node"

# name -> (load generator protocol, what it is)
SERVERS: dict[str, tuple[str, str]] = {
    "aether": ("centrifuge", "Aether (Trio, wsproto), Centrifugo protocol v2 JSON"),
    "websockets": ("plain", "minimal broadcast server on `websockets` (asyncio)"),
    "socketio-py": ("socketio", "python-socketio (ASGI) on uvicorn"),
    "socketio-node": ("socketio", "Socket.IO's Node.js server (npm socket.io)"),
}
# Plain-text and JSON log lines of level warning and above, and tracebacks.
ERROR_LINE = re.compile(
    r'Traceback|\b(?:ERROR|CRITICAL|WARNING)\b|"level":\s*"(?:error|critical|warning)"|Error:'
)


def raise_nofile() -> None:
    """preexec_fn: open-files soft limit up to the hard limit (10,000 connections need it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def api_support() -> tuple[dict[str, Any] | None, str]:
    """How to give Aether's server HTTP API a publishing key, or None and why not.

    The API is being written concurrently; its config shape is read from `ApiConfig` rather than
    assumed (the config loader rejects unknown keys). Known shapes: `[[api.keys]]` tables with
    name/key/roles, a single `key`/`api_key`, or `insecure = true`. Returns {"toml": extra config
    text, "key": the key to send}; whether it works is decided by a probe once the server runs."""
    if importlib.util.find_spec("aether_trio.http.api.routes") is None:
        return None, "aether_trio/http/api/routes.py does not exist yet"
    import attrs

    from aether_trio import config

    fields = {f.name for f in attrs.fields(config.ApiConfig)}
    key = "bench-" + os.urandom(12).hex()
    if "keys" in fields and hasattr(config, "ApiKey"):
        key_fields = {f.name for f in attrs.fields(config.ApiKey)}
        entry = {"name": "bench", "key": key, "roles": ["publisher"]}
        body = "".join(f"{k} = {_toml(v)}\n" for k, v in entry.items() if k in key_fields)
        text = f"[[api.keys]]\n{body}\n"
    elif fields & {"key", "api_key"}:
        text = f"[api]\n{sorted(fields & {'key', 'api_key'})[0]} = {_toml(key)}\n\n"
    elif "insecure" in fields:
        text, key = "[api]\ninsecure = true\n\n", ""
    else:
        text, key = "", ""
    return {"toml": text, "key": key}, f"ApiConfig fields: {sorted(fields)}"


# [limits] settings where 0 turns a limit off: a benchmark measures capacity, not the limits.
LIMITS_OFF = (
    "command_rate", "user_command_rate", "max_connections", "connection_limit_per_user",
    "connections_per_ip", "connection_rate_per_ip", "channel_publication_rate",
)  # fmt: skip


def limits_off() -> dict[str, Any]:
    """The [limits] table that turns Aether's rate and count limits off (those it has)."""
    import attrs

    from aether_trio import config

    if not hasattr(config, "LimitsConfig"):
        return {}
    fields = {f.name for f in attrs.fields(config.LimitsConfig)}
    return {name: 0 for name in LIMITS_OFF if name in fields}


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def aether_config(port: int, http_port: int, secret: str, api: dict[str, Any] | None) -> str:
    sections: dict[str, dict[str, Any]] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "shutdown_drain_seconds": 2.0,
            "close_wait_seconds": 1.0,
        },
        "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
        "token": {"hmac_secret": secret},
        "channel.without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
        },
        "log": {"level": "info"},
        "limits": limits_off(),
    }
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in body.items()) + "\n"
        for name, body in sections.items()
        if body
    ) + (api["toml"] if api else "")


class Server:
    def __init__(
        self,
        name: str,
        run_dir: Path,
        secret: str,
        api: dict[str, Any] | None,
        pythonpath: Path | None = None,
    ) -> None:
        self.name = name
        self.pythonpath = pythonpath
        self.protocol = SERVERS[name][0]
        self.run_dir = run_dir
        self.secret = secret
        self.api_settings = api if name == "aether" else None
        self.port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir / f"{name}.log"
        self.api: dict[str, Any] | None = None
        self.api_note = ""

    def command(self) -> list[str]:
        if self.name == "aether":
            config = self.run_dir / "aether.toml"
            config.write_text(
                aether_config(self.port, self.http_port, self.secret, self.api_settings)
            )
            return [sys.executable, "-m", "aether_trio", "serve", "-c", str(config)]
        if self.name == "websockets":
            return [sys.executable, str(PEERS / "ws_broadcast.py"), str(self.port)]
        if self.name == "socketio-py":
            return [sys.executable, str(PEERS / "sio_server.py"), str(self.port)]
        return ["node", str(NODE_DIR / "server.js"), str(self.port)]

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        env = dict(os.environ)
        if self.name == "aether" and self.pythonpath is not None:
            env["PYTHONPATH"] = str(self.pythonpath)
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} on start")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.name} did not listen on {self.port} within 30 s")
        if self.name == "aether":
            self._probe_api()

    def _probe_api(self) -> None:
        """Use `POST /api/publish` only if it answers a publish with a result."""
        if self.api_settings is None:
            return
        key = self.api_settings["key"]
        body = json.dumps({"channel": "bench.probe", "data": "probe"})
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
            conn.request(
                "POST",
                "/api/publish",
                body,
                {"Content-Type": "application/json", "X-API-Key": str(key)},
            )
            response = conn.getresponse()
            text = response.read()[:200]
            conn.close()
        except OSError as exc:
            self.api_note = f"probe failed: {exc}"
            return
        if response.status == 200 and b'"result"' in text:
            self.api = {"port": self.http_port, "path": "/api/publish", "key": str(key)}
            self.api_note = "POST /api/publish answered a publish"
        else:
            self.api_note = f"POST /api/publish answered {response.status} {text!r}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then SIGKILL after 10 s; returns the exit status and the log's error lines."""
        assert self.proc is not None
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        lines = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if ERROR_LINE.search(line)]
        return {
            "died_during_run": not alive,
            "exit_code": self.proc.returncode,
            "log": f"logs/{self.log_path.name}",
            "log_error_lines": len(errors),
            "log_error_excerpt": errors[:10],
        }
