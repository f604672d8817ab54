"""The servers under test: how to start each one on a free port, wait for it, stop it.

Every server runs in its own process with the open-files soft limit raised to the hard limit
(20,000 on the project's machines), listens on 127.0.0.1 only, and writes its output to a log
file that the report scans for errors. Aether gets a config written for the run: a fresh HS256
secret, permissive channels without namespace (subscribe and publish for clients), no history or
presence (a plain fan-out like the peers), rate and count limits off, and the HTTP API when the
code base has one; everything else at its defaults. One namespace, `recover:`, has history and
allows recovery: the reconnect storm's channel (no other scenario uses it).

The Go peer (`go-centrifuge`, peers/go_centrifuge/) is built from source with Debian's Go and
centrifuge packages when `go` is on PATH (`build_go_peer`: only when the source is newer than
the binary) and verifies the run's HS256 secret, given on its command line.

The Redis servers (`aether-redis`, `aether-redis-2w`) are that config on the Redis engine, with
one process or `[server] workers = 2`, against one private redis-server the harness starts for
the run (`RedisServer`: its own port and directory, the settings docs/redis.md recommends, so
Aether warns about nothing); each server of the run uses a prefix of its own.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "RECOVER_NAMESPACE", "REDIS_SERVERS", "SERVERS", "RedisServer", "Server", "api_support",
    "build_go_peer", "free_port", "raise_nofile",
]  # fmt: skip

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
NODE_DIR = PEERS / "node"
GO_DIR = PEERS / "go_centrifuge"
GO_BINARY = GO_DIR / "go_centrifuge"
# Where Debian's golang-github-* packages put their source (GOPATH mode).
GO_SYSTEM_PATH = "/usr/share/gocode"
# The reconnect storm's namespace: history (so offsets and an epoch exist) and recovery allowed.
RECOVER_NAMESPACE = {
    "name": "recover",
    "history_size": 1000,
    "history_ttl": 600.0,
    "allow_recovery": True,
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
}

# name -> (load generator protocol, what it is)
SERVERS: dict[str, tuple[str, str]] = {
    "aether": ("centrifuge", "Aether (Trio, wsproto), Centrifugo protocol v2 JSON"),
    "websockets": ("plain", "minimal broadcast server on `websockets` (asyncio)"),
    "socketio-py": ("socketio", "python-socketio (ASGI) on uvicorn"),
    "socketio-node": ("socketio", "Socket.IO's Node.js server (npm socket.io)"),
    "go-centrifuge": (
        "centrifuge-v1", "Go centrifugal/centrifuge v0.15 (Debian), client protocol v1 JSON",
    ),
    "aether-redis": ("centrifuge", "Aether on the Redis engine (private redis-server), 1 process"),
    "aether-redis-2w": (
        "centrifuge", "Aether on the Redis engine, [server] workers = 2 (SO_REUSEPORT)",
    ),
}  # fmt: skip
# Aether servers on the Redis engine -> their number of worker processes.
REDIS_SERVERS = {"aether-redis": 1, "aether-redis-2w": 2}
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


def free_ports(count: int) -> int:
    """A port P such that P .. P + count were free when asked (worker K: internal port P + K)."""
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            for port in range(base, base + count + 1):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free ports")


class RedisServer:
    """A private redis-server for the run: a free port, a directory of its own, AOF with fsync
    always and no eviction (docs/redis.md's settings: Aether's start-up check stays quiet)."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.dir = run_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.dir / "redis.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy",
             "noeviction", "--dir", str(self.dir), "--protected-mode", "no"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def address(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def build_go_peer() -> tuple[bool, str]:
    """Build peers/go_centrifuge/go_centrifuge unless it is newer than its source: (built or
    up to date, what happened). GOPATH mode in a scratch GOPATH holding a link to the package,
    as its README says: only there does Go map `github.com/golang-jwt/jwt/v4` to Debian's
    directory. Needs `go` and the golang-github-* packages (README; .ci/run installs them)."""
    go = shutil.which("go")
    if go is None:
        return False, "go not installed (apt-get install golang-go and the packages in " \
            "ops/bench/peers/go_centrifuge/README.md)"  # fmt: skip
    sources = [p for p in GO_DIR.iterdir() if p.suffix == ".go" or p.name == "go.mod"]
    newest = max(p.stat().st_mtime for p in sources)
    if GO_BINARY.exists() and GO_BINARY.stat().st_mtime >= newest:
        return True, "binary up to date"
    with tempfile.TemporaryDirectory(prefix="aether-bench-gopath-") as tmp:
        (Path(tmp) / "src").mkdir()
        package = Path(tmp) / "src" / "go_centrifuge"
        package.symlink_to(GO_DIR)
        env = {
            **os.environ, "GO111MODULE": "off", "GOPATH": f"{tmp}:{GO_SYSTEM_PATH}",
            "GOCACHE": f"{tmp}/cache", "GOFLAGS": "",
            # Go takes $PWD as its working directory when it names the same one: the path
            # through the link, inside the GOPATH (a chdir alone resolves the link).
            "PWD": str(package),
        }  # fmt: skip
        try:
            done = subprocess.run(
                [go, "build", "-o", str(GO_BINARY), "."],
                cwd=package, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, "go build timed out after 600 s"
    if done.returncode:
        return False, f"go build failed ({done.returncode}): {done.stderr.strip()[-1500:]}"
    return True, "built"


def go_version() -> str:
    go = shutil.which("go")
    if go is None:
        return ""
    try:
        return subprocess.run(
            [go, "version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a workers' parent forks from several threads, so
    /proc/<pid>/task/<pid>/children does not list them all)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


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
    # The reconnect storm's `disconnect` needs the admin role; the publisher key keeps to its own.
    admin_key = "bench-admin-" + os.urandom(12).hex()
    if "keys" in fields and hasattr(config, "ApiKey"):
        key_fields = {f.name for f in attrs.fields(config.ApiKey)}
        text = ""
        for entry in (
            {"name": "bench", "key": key, "roles": ["publisher"]},
            {"name": "bench-admin", "key": admin_key, "roles": ["admin"]},
        ):
            body = "".join(f"{k} = {_toml(v)}\n" for k, v in entry.items() if k in key_fields)
            text += f"[[api.keys]]\n{body}\n"
    elif fields & {"key", "api_key"}:
        text = f"[api]\n{sorted(fields & {'key', 'api_key'})[0]} = {_toml(key)}\n\n"
        admin_key = key
    elif "insecure" in fields:
        text, key, admin_key = "[api]\ninsecure = true\n\n", "", ""
    else:
        text, key, admin_key = "", "", ""
    return {"toml": text, "key": key, "admin_key": admin_key}, f"ApiConfig fields: {sorted(fields)}"


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


def aether_config(
    port: int,
    http_port: int,
    secret: str,
    api: dict[str, Any] | None,
    redis: str = "",
    workers: int = 1,
) -> str:
    """`redis`: the Redis engine at that address (prefix and all), with `workers` processes."""
    server: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "shutdown_drain_seconds": 2.0,
        "close_wait_seconds": 1.0,
    }
    if workers > 1:
        server["workers"] = workers
    sections: dict[str, dict[str, Any]] = {
        "server": server,
        "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
        "token": {"hmac_secret": secret},
        "channel.without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
        },
        "log": {"level": "info"},
        "limits": limits_off(),
    }
    namespace = "[[channel.namespaces]]\n" + "".join(
        f"{k} = {_toml(v)}\n" for k, v in RECOVER_NAMESPACE.items()
    )
    if redis:
        address, prefix = redis.split("#")
        sections["engine"] = {"type": "redis"}
        sections["engine.redis"] = {"address": address, "prefix": prefix}
    return (
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in body.items()) + "\n"
            for name, body in sections.items()
            if body
        )
        + namespace
        + "\n"
        + (api["toml"] if api else "")
    )


class Server:
    def __init__(
        self,
        name: str,
        run_dir: Path,
        secret: str,
        api: dict[str, Any] | None,
        pythonpath: Path | None = None,
        redis: RedisServer | None = None,
    ) -> None:
        self.name = name
        self.pythonpath = pythonpath
        self.protocol = SERVERS[name][0]
        self.run_dir = run_dir
        self.secret = secret
        self.aether = name.startswith("aether")
        self.api_settings = api if self.aether else None
        self.workers = REDIS_SERVERS.get(name, 1)
        self.redis = redis if name in REDIS_SERVERS else None
        if name in REDIS_SERVERS and redis is None:
            raise RuntimeError(f"{name} needs a redis-server")
        self.port = free_port()
        # Worker K's internal port is http_port + K; one process has http_port itself.
        self.http_port = free_ports(self.workers)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir / f"{name}.log"
        self.api: dict[str, Any] | None = None
        self.api_note = ""

    def command(self) -> list[str]:
        if self.aether:
            config = self.run_dir / f"{self.name}.toml"
            redis = f"{self.redis.address}#b{os.urandom(5).hex()}" if self.redis else ""
            config.write_text(
                aether_config(
                    self.port, self.http_port, self.secret, self.api_settings, redis, self.workers
                )
            )
            return [sys.executable, "-m", "aether_trio", "serve", "-c", str(config)]
        if self.name == "websockets":
            return [sys.executable, str(PEERS / "ws_broadcast.py"), str(self.port)]
        if self.name == "socketio-py":
            return [sys.executable, str(PEERS / "sio_server.py"), str(self.port)]
        if self.name == "go-centrifuge":
            return [str(GO_BINARY), str(self.port), self.secret]
        return ["node", str(NODE_DIR / "server.js"), str(self.port)]

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        env = dict(os.environ)
        if self.aether and self.pythonpath is not None:
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} on start")
            if self._listening():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.name} did not listen on {self.port} within 60 s")
        if self.aether:
            self._probe_api()

    def _listening(self) -> bool:
        if self.workers > 1:  # every worker, not just the first to open the shared port
            text = self.log_path.read_text(errors="replace")
            return len(re.findall(r"worker \d+ \(pid \d+\) is listening", text)) >= self.workers
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def api_port(self) -> int:
        """The internal port the API is published to: worker 1's with workers."""
        return self.http_port + 1 if self.workers > 1 else self.http_port

    def _probe_api(self) -> None:
        """Use `POST /api/publish` only if it answers a publish with a result."""
        if self.api_settings is None:
            return
        key = self.api_settings["key"]
        body = json.dumps({"channel": "bench.probe", "data": "probe"})
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
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
            self.api = {
                "port": self.api_port,
                "path": "/api/publish",
                "key": str(key),
                "admin_key": str(self.api_settings.get("admin_key", key)),
            }
            self.api_note = "POST /api/publish answered a publish"
        else:
            self.api_note = f"POST /api/publish answered {response.status} {text!r}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        """The server's processes: itself, and with workers its children."""
        return [self.pid, *children(self.pid)] if self.workers > 1 else [self.pid]

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
