"""`aether init` and `aether healthcheck` as real processes: the written config and its secrets,
refusing to overwrite, `--instance` and `--pid-file`, and the health check's answers when
everything works, when publications stop arriving, when it cannot run, and when the round trip
is slow. (Down and not-ready servers: tests/test_ops_deploy.py, against an installation.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ops_helpers import OPS, aether, aether_processes, free_base_port, init_config

from aether_trio.config import load_config
from aether_trio.ops.init import PLACEHOLDER, template


def test_init_writes_a_config_that_loads_with_secret_files_of_mode_0600(tmp_path: Path) -> None:
    config = init_config(tmp_path, 18000, 19000)
    secrets = sorted((tmp_path / "etc" / "secrets").iterdir())
    assert [p.name for p in secrets] == [
        "api-backend.key", "api-healthcheck.key", "api-ops.key", "hmac.secret"
    ]  # fmt: skip
    assert {oct(p.stat().st_mode & 0o777) for p in secrets} == {"0o600"}
    assert oct((tmp_path / "etc" / "secrets").stat().st_mode & 0o777) == "0o700"
    assert len({p.read_text() for p in secrets}) == 4  # each its own random value
    loaded = load_config(config)
    assert loaded.token.hmac_secret == (tmp_path / "etc/secrets/hmac.secret").read_text().strip()
    assert {k.name: k.roles for k in loaded.api.keys} == {
        "backend": ("publisher", "reader"), "ops": ("admin",), "healthcheck": ("publisher",)
    }  # fmt: skip
    assert loaded.admin.data_dir == str(tmp_path / "data")
    assert loaded.server.trusted_proxies == ("127.0.0.1/32", "::1/128")
    assert [n.name for n in loaded.channel.namespaces] == ["healthcheck"]
    assert not PLACEHOLDER.search(config.read_text())
    checked = aether("check-config", "-c", str(config), "--instance", "2")
    assert checked.returncode == 0, checked.stderr
    assert "listening on 127.0.0.1:18002" in checked.stdout


def test_init_refuses_to_overwrite_and_force_keeps_the_secrets(tmp_path: Path) -> None:
    init_config(tmp_path, 18000, 19000)
    secret = (tmp_path / "etc/secrets/hmac.secret").read_text()
    again = aether("init", str(tmp_path / "etc"), "--data-dir", str(tmp_path / "data"))
    assert again.returncode == 1
    assert "exists; give --force" in again.stderr
    forced = aether("init", str(tmp_path / "etc"), "--data-dir", str(tmp_path / "d2"), "--force",
                    "--origin", "https://app.example.com")  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert "kept  " in forced.stdout
    assert (tmp_path / "etc/secrets/hmac.secret").read_text() == secret
    loaded = load_config(tmp_path / "etc" / "config.toml")
    assert loaded.server.allowed_origins == ("https://app.example.com",)
    assert loaded.admin.data_dir == str(tmp_path / "d2")


def test_the_template_is_shipped_in_ops_config_and_comments_every_limit() -> None:
    assert (OPS / "config" / "production.toml").read_text() == template()
    text = template()
    section = text[text.index("[limits]") :]
    assert section.count("#") >= 8  # the production values are explained


def test_serve_writes_and_removes_its_pid_file(tmp_path: Path) -> None:
    config = init_config(tmp_path, 0, 0)
    pid_file = tmp_path / "aether.pid"
    process = subprocess.Popen(
        [sys.executable, "-m", "aether_trio", "serve", "-c", str(config), "--instance", "3",
         "--pid-file", str(pid_file)], stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert pid_file.read_text().strip() == str(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert not pid_file.exists()
    assert (tmp_path / "data" / "3").is_dir()  # --instance 3: its own state


def healthcheck(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return aether("healthcheck", "-c", str(config), "--timeout", "2", *args)


def test_the_health_check_ok_and_when_publications_stop_arriving(tmp_path: Path) -> None:
    config = init_config(tmp_path, free_base_port(2), free_base_port(2))
    with aether_processes(config, 2, tmp_path):
        ok = healthcheck(config, "--instance", "1", "--json")
        assert ok.returncode == 0, ok.stdout
        report = json.loads(ok.stdout)
        assert report["status"] == "OK"
        assert [s["name"] for s in report["steps"]] == [
            "health", "ready", "connect", "subscribe", "publish", "deliver", "metrics"
        ]  # fmt: skip
        assert 0 < report["round_trip_seconds"] < 0.5
        line = healthcheck(config, "--instance", "2").stdout
        assert line.startswith("AETHER OK - 7 steps OK, publish to delivery ")
        assert " | rtt=" in line
        # The WebSocket of process 1, the API of process 2: the publication is accepted and never
        # arrives (as when nodes do not share a broker).
        one, two = load_config(config, 1), load_config(config, 2)
        lost = healthcheck(config, "--url", f"ws://127.0.0.1:{one.server.port}/connection/websocket",
                           "--http-url", f"http://127.0.0.1:{two.http.port}")  # fmt: skip
        assert lost.returncode == 2, lost.stdout
        assert lost.stdout.startswith("AETHER CRITICAL - deliver: no answer within 2 s")
        # A round trip above the warning threshold: WARNING, exit 1.
        slow = healthcheck(config, "--instance", "1", "--warning-rtt", "0")
        assert slow.returncode == 1, slow.stdout
        assert slow.stdout.startswith("AETHER WARNING - deliver: round trip ")


def test_the_health_check_is_unknown_without_what_it_needs(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[token]\nhmac_secret_file = ''\n")
    result = healthcheck(config)
    assert result.returncode == 3
    assert result.stdout.startswith("AETHER UNKNOWN - config: no [token] hmac_secret")
    config.write_text("[token]\nhmac_secret = 'x'\n")
    assert "no [api] key with the publisher role" in healthcheck(config).stdout
    assert healthcheck(tmp_path / "missing.toml").returncode == 3
