"""A private redis-server for the tests: its own port and directory, no persistence, never the
machine's own Redis. A missing redis-server fails the tests that need one (CI installs it).

`RedisServer` also gives the tests a synchronous client (redis-py's, fine for a few quick
commands against a local server), SIGSTOP/SIGCONT, restart on the same port, and `elapse`:
moving every key's TTL forward, which is how the engine contract tests let an hour pass.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

__all__ = ["RedisServer", "free_port", "running_redis"]

# Move every key of a prefix `ARGV[1]` ms forward in time: what would have expired is deleted.
_ELAPSE = """
local cursor, moved = "0", 0
repeat
  local found = redis.call("scan", cursor, "MATCH", ARGV[2] .. "*", "COUNT", 1000)
  cursor = found[1]
  for _, key in ipairs(found[2]) do
    local left = redis.call("pttl", key)
    if left > 0 then
      if left <= tonumber(ARGV[1]) then redis.call("del", key) else
        redis.call("pexpire", key, left - tonumber(ARGV[1])) end
      moved = moved + 1
    end
  end
until cursor == "0"
return moved
"""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.extra = extra
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="aether-redis-"))
        # A test that restarts the server may choose a port outside the ephemeral range: while
        # the server is down, its port cannot become some outgoing connection's local port.
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no",
                *self.extra]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.ping():
                    return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)  # polling with a deadline: the server gives no other signal

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def ping(self) -> bool:
        return bool(self.client().ping())

    def command(self, *args: Any) -> Any:
        with self.client() as conn:
            return conn.execute_command(*args)

    def elapse(self, prefix: str, seconds: float) -> int:
        return int(self.command("EVAL", _ELAPSE, 0, int(seconds * 1000), prefix))

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@contextmanager
def running_redis(*extra: str, port: int | None = None) -> Iterator[RedisServer]:
    """A redis-server of the caller's own (`extra`: more command-line options)."""
    server = RedisServer(*extra, port=port)
    try:
        yield server
    finally:
        server.close()
