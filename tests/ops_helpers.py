"""Helpers for the tests that run the operations kit's real programs: `aether init` and
`aether serve` processes, nginx, the files of ops/.

Ports come from the operating system: a base port whose next `n` ports were free a moment ago
(Aether's `--instance N` listens on base + N). Everything runs on 127.0.0.0/8 and stops within
the test: each helper kills what it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
WAIT = 20.0


def free_base_port(count: int) -> int:
    """A port P such that P + 1 .. P + count were free when asked."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1]) - 1
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base + 1, base + count + 1):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports")


def aether(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`aether ARGS` as a real process (measured by coverage)."""
    return subprocess.run(
        [sys.executable, "-m", "aether_trio", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def init_config(directory: Path, port: int, http_port: int, extra: str = "") -> Path:
    """`aether init` into `directory` (data in directory/data), `extra` TOML appended."""
    result = aether(
        "init", str(directory / "etc"), "--data-dir", str(directory / "data"),
        "--log-dir", str(directory / "log"), "--port", str(port), "--http-port", str(http_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    path = directory / "etc" / "config.toml"
    if extra:
        path.write_text(path.read_text() + "\n" + extra)
    return path


def secret(config: Path, name: str) -> str:
    return (config.parent / "secrets" / name).read_text().strip()


class AetherProcess:
    """`aether serve -c CONFIG --instance N`, its log in a file."""

    def __init__(self, config: Path, instance: int, log: Path) -> None:
        self.config = config
        self.instance = instance
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = len(self.log())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aether_trio", "serve", "-c", str(self.config),
                 "--instance", str(self.instance)],
                stdout=log, stderr=log,
            )  # fmt: skip
        self.wait_for_log(r"listening on ws", after=offset)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, after: int = 0, seconds: float = WAIT) -> None:
        deadline = time.monotonic() + seconds
        while not re.search(pattern, self.log()[after:]):
            exited = self.process is not None and self.process.poll() is not None
            assert not exited, f"aether exited; log:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{pattern!r} not logged within {seconds}s"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=WAIT)

    def restart(self) -> None:
        """A graceful stop (SIGTERM: clients told 3001, history saved), then a start."""
        assert self.stop() == 0
        self.start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT)


@contextmanager
def aether_processes(config: Path, count: int, logs: Path) -> Iterator[list[AetherProcess]]:
    processes = [AetherProcess(config, n, logs / f"aether-{n}.log") for n in range(1, count + 1)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for process in processes:
            if process.process is not None:
                try:
                    process.process.wait(timeout=WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert path is not None, (
        "nginx not found: install Debian's `nginx` package (apt-get install -y nginx; .ci/run does"
        " it). ops/nginx/aether.conf cannot be checked without it."
    )
    return path


def render_nginx_site(replacements: dict[str, str]) -> str:
    """ops/nginx/aether.conf with each `old` replaced by `new`; every `old` must be there (the
    test breaks when the file changes shape rather than testing something else)."""
    text = (OPS / "nginx" / "aether.conf").read_text()
    for old, new in replacements.items():
        assert old in text, f"ops/nginx/aether.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def nginx_main_config(directory: Path, site: str) -> Path:
    """A main nginx.conf around the site file: no daemon, everything in `directory`, workers
    as the current user."""
    (directory / "aether.conf").write_text(site)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / sub).mkdir(exist_ok=True)
    # As root nginx would hand its workers to another user; these run as the current one.
    user = f"user {_user_name()};" if os.geteuid() == 0 else ""
    main = directory / "nginx.conf"
    main.write_text(
        f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/aether.conf;
}}
"""
    )
    return main


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def nginx_test(main: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(main.parent), "-c", str(main), "-e",
         str(main.parent / "error.log")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@contextmanager
def running_nginx(main: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [nginx_binary(), "-p", str(main.parent), "-c", str(main), "-e",
         str(main.parent / "error.log")],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (main.parent / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
