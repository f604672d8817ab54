"""The real `aether serve` process: signals, reload, drain, CLI exit codes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from conftest import SECRET, close_reason, open_raw, token
from trio_websocket import ConnectionClosed

CONFIG = f"""
[server]
port = 0
shutdown_drain_seconds = 3.0
close_wait_seconds = 1.0

[http]
port = 0

[token]
hmac_secret = "{SECRET}"

[channel.without_namespace]
allow_subscribe_for_client = true
allow_publish_for_client = true
"""

EXTRA_NAMESPACE = """
[[channel.namespaces]]
name = "late"
allow_subscribe_for_client = true
"""


class ServerProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = ""
        self._buffer = b""

    async def wait_for_log(self, pattern: str, seconds: float = 10) -> re.Match[str]:
        assert self.process.stderr is not None
        with trio.fail_after(seconds):
            while True:
                match = re.search(pattern, self.log)
                if match:
                    return match
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"server exited; log:\n{self.log}")
                self.log += chunk.decode()


async def start(config_path: Path) -> tuple[ServerProcess, str]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aether_trio", "serve", "-c", str(config_path)],
        stderr=subprocess.PIPE,
    )
    server = ServerProcess(process)
    # The URL ends at whitespace (text logs) or at the closing quote of a JSON log line.
    match = await server.wait_for_log(r'listening on (ws://[^\s"]+)')
    return server, match.group(1)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "aether.toml"
    path.write_text(CONFIG)
    return path


async def test_sigterm_closes_clients_with_shutdown_and_exits(config_file: Path) -> None:
    server, url = await start(config_file)
    try:
        async with open_raw(url) as client:
            reply = await client.connect(token())
            assert "connect" in reply
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await client.read_until_closed()
            close = close_reason(closed.value)
            assert close.code == 3001
            assert close.reason == "shutdown"
        with trio.fail_after(5):
            code = await server.process.wait()
        assert code == 0
        await server.wait_for_log(r"shutting down: closing 1 connections")
    finally:
        server.process.kill()


async def test_sighup_reloads_namespaces_without_dropping_connections(config_file: Path) -> None:
    server, url = await start(config_file)
    try:
        async with open_raw(url) as client:
            await client.connect(token())
            refused = await client.command("subscribe", {"channel": "late:room"})
            assert refused["error"]["code"] == 102  # unknown namespace

            await trio.Path(config_file).write_text(CONFIG + EXTRA_NAMESPACE)
            server.process.send_signal(signal.SIGHUP)
            await server.wait_for_log(r"configuration reloaded: 1 namespaces")

            # The same connection keeps working and sees the new namespace.
            accepted = await client.command("subscribe", {"channel": "late:room"})
            assert "subscribe" in accepted, accepted

            await trio.Path(config_file).write_text(CONFIG + "[server]\nport = 'not a port'\n")
            server.process.send_signal(signal.SIGHUP)
            await server.wait_for_log(r"reload rejected, keeping the running configuration")
            still = await client.command("subscribe", {"channel": "late:other"})
            assert "subscribe" in still, still
    finally:
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            await server.process.wait()


def test_check_config_reports_bad_config_with_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[client]\nping_interval = 'often'\n")
    result = subprocess.run(
        [sys.executable, "-m", "aether_trio", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "client.ping_interval: expected a number" in result.stderr


def test_serve_refuses_bad_config_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 0\nunknown_option = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "aether_trio", "serve", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "server.unknown_option: unknown key" in result.stderr
    assert "listening" not in result.stderr


def test_token_and_version_commands(tmp_path: Path) -> None:
    import jwt

    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    out = subprocess.run(
        [sys.executable, "-m", "aether_trio", "token", "-c", str(path), "--user", "7",
         "--info", '{"name": "Ann"}'],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip
    claims = jwt.decode(out, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "7"
    assert claims["info"] == {"name": "Ann"}
    assert claims["exp"] > 0
    version = subprocess.run(
        [sys.executable, "-m", "aether_trio", "version"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert re.fullmatch(r"aether \d+\.\d+\.\d+\n", version)
