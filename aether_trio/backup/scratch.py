"""A private redis-server on a free loopback port for the drill and for restores of RDB files:
no persistence of its own, its directory removed afterwards; optionally loading an RDB file."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..engines import keyspace
from .errors import BackupError

__all__ = ["scratch_redis"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def scratch_redis(binary: str, rdb: Path | None = None, timeout: float = 60.0) -> Iterator[str]:
    """A private redis-server on a free loopback port, no persistence; its address. With `rdb`,
    it starts with that RDB file loaded (a copy: the server never writes it)."""
    path = shutil.which(binary)
    if path is None:
        raise BackupError(f"[backup] redis_server: {binary!r} not found (install redis-server)")
    workdir = tempfile.mkdtemp(prefix="aether-drill-redis-")
    port = _free_port()
    args = [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", workdir]  # fmt: skip
    if rdb is not None:
        shutil.copyfile(rdb, Path(workdir) / "dump.rdb")
        args += ["--dbfilename", "dump.rdb"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + timeout
        while not keyspace.ping(address):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BackupError(f"the scratch redis-server did not start on port {port}")
            time.sleep(0.05)  # redis-server gives no readiness signal but answering
        yield address
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
