"""The deployment under soak, as ops/README.md deploys it: `ops/deploy.sh --init supervisor`
into a prefix (release.py), whose supervisord runs two `aether serve --instance N` processes
over a private Redis (AOF on, every write fsynced), behind a real nginx from
ops/nginx/aether.conf with TLS (a trustme CA); `[backup]` points at a private S3 endpoint (moto's
server on loopback) for the backup + verify cycle (backups.py).

The nginx site is rendered the way the ops tests render it (tests/ops_helpers.py, imported
from the source tree so there is one copy): paths, ports and the upstream's balancing, which is
`least_conn` with failover because the processes share everything through Redis (the file's own
comment says to do so). Everything listens on 127.0.0.1 and every process is stopped on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trustme

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from backup_helpers import ACCESS, running_moto  # noqa: E402
from ops_helpers import (  # noqa: E402  (the tests' helpers: one copy of the renderers)
    free_base_port,
    init_config,
    nginx_main_config,
    render_nginx_site,
    running_nginx,
    secret,
)
from redis_server import RedisServer  # noqa: E402
from release import deploy, prefix_venv  # noqa: E402

from aether_trio.auth.tokens import mint_token  # noqa: E402
from aether_trio.backup.crypto import generate_key_file  # noqa: E402

BIN = Path(sys.executable).parent
PROCESSES = 2
BUCKET = "aether-soak"
CHANNELS = """
[[channel.namespaces]]
name = "soak"
presence = true
history_size = 20000
history_ttl = 3600.0
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
allow_presence_for_subscriber = true
allow_user_limited_channels = true
"""


@attrs.define
class Deployment:
    directory: Path
    config: Path
    redis: RedisServer
    ca: trustme.CA
    https_port: int
    ws_base: int
    http_base: int
    releases: list[dict[str, Any]]  # what ops/deploy.sh did, release by release

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}/connection/websocket"

    def internal(self, instance: int) -> str:
        return f"http://127.0.0.1:{self.http_base + instance}"

    def token(self, user: str) -> str:
        return mint_token(secret(self.config, "hmac.secret"), {"sub": user})

    def key(self, name: str) -> str:
        return secret(self.config, f"api-{name}.key")

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.directory / "etc" / "supervisord.conf"),
             *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def pid(self, instance: int) -> int | None:
        answer = self.supervisorctl("pid", f"aether:aether-{instance}").stdout.strip()
        return int(answer) if answer.isdigit() and answer != "0" else None

    def aether(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "aether"), *args], capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip


def _site(directory: Path, ca: trustme.CA, https_port: int, http_port: int, ws_base: int) -> str:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return render_nginx_site(
        {
            "    listen 80;\n    listen [::]:80;\n": f"    listen 127.0.0.1:{http_port};\n",
            "    listen 443 ssl;\n    listen [::]:443 ssl;\n":
                f"    listen 127.0.0.1:{https_port} ssl;\n",
            "/etc/aether/tls/fullchain.pem": str(cert),
            "/etc/aether/tls/privkey.pem": str(key),
            # Redis shares everything: balance, and fail over to the other process. max_fails=0
            # stays (the file's comment says to drop it for Redis; that is wrong for WebSockets):
            # with nginx's default max_fails=1, one refused connect while a process restarts
            # marks it failed, and only a request that *completes* through it clears the mark,
            # which an upgraded connection does not do while it lives; so the restarted process
            # is offered one new connection per fail_timeout (10 s), and once both processes
            # have restarted nginx answers 502 "no live upstreams" to nearly every handshake.
            # proxy_next_upstream still sends a refused connect on to the other process.
            "    hash $remote_addr consistent;\n": "    least_conn;\n",
            "server 127.0.0.1:8001 max_fails=0;": f"server 127.0.0.1:{ws_base + 1} max_fails=0;",
            "server 127.0.0.1:8002 max_fails=0;": f"server 127.0.0.1:{ws_base + 2} max_fails=0;",
            "proxy_next_upstream off;": "proxy_next_upstream error timeout;",
        }
    )  # fmt: skip


def _wait_ready(deployment: Deployment, seconds: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    for instance in range(1, PROCESSES + 1):
        while True:
            try:
                if (
                    httpx.get(f"{deployment.internal(instance)}/ready", timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log = (deployment.directory / "log").glob("*.log")
                tails = "\n".join(p.read_text()[-2000:] for p in log)
                raise RuntimeError(f"process {instance} not ready within {seconds}s:\n{tails}")
            time.sleep(0.2)


@contextmanager
def _s3_backup_target(etc: Path) -> Iterator[str]:
    """A private S3 endpoint with a bucket, the credentials and a backup key under `etc`; yields
    the `[backup]` section that points the deployment's config at them."""
    with running_moto() as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        (etc / "aws").write_text(
            f"[default]\naws_access_key_id = {ACCESS[0]}\naws_secret_access_key = {ACCESS[1]}\n"
        )
        generate_key_file(etc / "backup.key")
        yield (
            f'\n[backup]\nbucket = "{BUCKET}"\nprefix = "soak/"\nendpoint_url = "{moto.url}"\n'
            'region = "us-east-1"\ncredentials_file = "aws"\nkey_file = "backup.key"\n'
        )


@contextmanager
def deployed(directory: Path) -> Iterator[Deployment]:
    directory.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        redis = RedisServer("--appendonly", "yes", "--appendfsync", "always")
        stack.callback(redis.close)
        drafted = free_base_port(PROCESSES), free_base_port(PROCESSES)
        config = init_config(directory, *drafted, CHANNELS)
        text = config.read_text().replace(
            '[engine]\ntype = "memory"',
            f'[engine]\ntype = "redis"\nredis = {{ address = "{redis.address}", prefix = "soak" }}',
        )
        backup = stack.enter_context(_s3_backup_target(config.parent))
        config.write_text(
            text.replace("connection_limit_per_user = 50", "connection_limit_per_user = 500")
            + backup
        )
        check = subprocess.run([str(BIN / "aether"), "check-config", "-c", str(config)],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if check.returncode != 0:
            raise RuntimeError(f"the soak config does not load: {check.stdout}{check.stderr}")
        # Installed by ops/deploy.sh into the prefix (release.py), started on the files it rendered.
        prefix_venv(directory)
        first = deploy(directory, 1, PROCESSES)
        if first["exit"] != 0:
            raise RuntimeError(f"ops/deploy.sh failed: {first}")
        # The ports are taken now, not before the deploy's seconds: a port free when asked is
        # less likely to have been taken by someone else when the process binds it.
        ws_base, http_base = free_base_port(PROCESSES), free_base_port(PROCESSES)
        https_port, http_port = free_base_port(1) + 1, free_base_port(1) + 1
        config.write_text(
            config.read_text()
            .replace(f"\nport = {drafted[0]}\n", f"\nport = {ws_base}\n", 1)
            .replace(f"\nport = {drafted[1]}\n", f"\nport = {http_base}\n", 1)
        )
        main = directory / "etc" / "supervisord.conf"
        # The harness venv's supervisord: the prefix venv shares its packages, not its scripts.
        started = subprocess.run([str(BIN / "supervisord"), "-c", str(main)], check=False)
        if started.returncode != 0:
            raise RuntimeError("supervisord did not start")
        stack.callback(_stop_supervisord, directory / "run" / "supervisord.pid")
        ca = trustme.CA()
        nginx = nginx_main_config(directory, _site(directory, ca, https_port, http_port, ws_base))
        stack.enter_context(running_nginx(nginx, https_port))
        deployment = Deployment(directory, config, redis, ca, https_port, ws_base, http_base,
                                [first])  # fmt: skip
        _wait_ready(deployment)
        yield deployment


def _stop_supervisord(pid_file: Path) -> None:
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)  # stops its processes gracefully, then itself
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
