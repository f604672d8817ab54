"""ops/deploy.sh for real into a temporary prefix, twice (the second run changes nothing), and
dry; the installation it makes run by the real programs its files configure:

- supervisord (PyPI `supervisor`, installed by the deploy into the prefix's venv) with
  ops/supervisor/supervisord.conf and aether.conf: two processes, a SIGKILLed one restarted and
  its SDK client back, the limits it sets, `just reload`, `just drain`, `just logs`,
  `just healthcheck`, and the health check failing when a process is down or not ready;
- ops/systemd/: systemd is not PID 1 on this machine (a container), so no unit can be started
  by it. The units are checked by `systemd-analyze verify` (which must be installed: its absence
  fails, it is never skipped) and their ExecStartPre, ExecStart, ExecReload and stop signal are
  run here as systemd would run them, against the deployed venv.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
from centrifuge import Client
from ops_helpers import OPS, ROOT, WAIT, free_base_port
from sdk_helpers import ClientRecorder

from aether_trio.auth.tokens import mint_token

DEPLOY = OPS / "deploy.sh"


@attrs.frozen
class Installation:
    prefix: Path
    port: int
    http_port: int
    first_output: str

    @property
    def config(self) -> Path:
        return self.prefix / "etc" / "config.toml"

    def secret(self, name: str) -> str:
        return (self.prefix / "etc" / "secrets" / name).read_text().strip()

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(
            self.prefix / "venv" / "bin" / "supervisorctl", "-c",
            self.prefix / "etc" / "supervisord.conf", *args,
        )  # fmt: skip

    def pid(self, instance: int) -> int:
        answer = self.supervisorctl("pid", f"aether:aether-{instance}").stdout.strip()
        return int(answer)

    def healthcheck(self, *args: object) -> subprocess.CompletedProcess[str]:
        return run(self.prefix / "bin" / "healthcheck", *args)

    def aether(self, *args: object) -> subprocess.CompletedProcess[str]:
        return run(self.prefix / "venv" / "bin" / "aether", *args)

    def just(self, *args: str) -> subprocess.CompletedProcess[str]:
        just = ROOT / ".venv" / "bin" / "just"
        return run(just, "--justfile", ROOT / "justfile", *args,
                   env={**os.environ, "AETHER_PREFIX": str(self.prefix)})  # fmt: skip


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, check=False,
        env=env, cwd=ROOT,
    )  # fmt: skip


def deploy(*args: object) -> subprocess.CompletedProcess[str]:
    return run(DEPLOY, *args)


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    prefix = tmp_path_factory.mktemp("deploy") / "aether"
    port, http_port = free_base_port(2), free_base_port(2)
    result = deploy("--prefix", prefix, "--port", port, "--http-port", http_port)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield Installation(prefix, port, http_port, result.stdout)
    finally:
        supervisord_pid = prefix / "run" / "supervisord.pid"
        if supervisord_pid.exists():
            pid = int(supervisord_pid.read_text())
            os.kill(pid, signal.SIGTERM)  # stops its processes gracefully, then itself
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)


def mode(path: Path) -> str:
    return f"{path.stat().st_mode & 0o7777:04o}"


def test_the_deploy_installs_starts_and_verifies_every_process(installation: Installation) -> None:
    out, prefix = installation.first_output, installation.prefix
    for step in range(1, 9):
        assert f"step {step}/8" in out
    assert re.search(r"health-check 1: AETHER OK - 7 steps OK", out), out
    assert re.search(r"health-check 2: AETHER OK - 7 steps OK", out), out
    assert "deploy: done" in out
    modes = {
        "etc": "0750", "data": "0750", "log": "0750", "run": "0750", "bin/healthcheck": "0755",
        "etc/config.toml": "0640", "etc/secrets": "0700", "etc/secrets/hmac.secret": "0600",
        "etc/secrets/api-ops.key": "0600", "etc/secrets/api-healthcheck.key": "0600",
    }  # fmt: skip
    assert {name: mode(prefix / name) for name in modes} == modes
    # Each process has its own state directory and pid file.
    assert (prefix / "data" / "1").is_dir()
    assert (prefix / "data" / "2").is_dir()
    assert sorted(p.name for p in (prefix / "run").glob("aether-*.pid")) == [
        "aether-1.pid", "aether-2.pid"
    ]  # fmt: skip
    # RUNNING once up for startsecs (3 s); the health check may have passed before that.
    deadline = time.monotonic() + WAIT
    while (
        len(re.findall(r"aether:aether-\d\s+RUNNING", installation.supervisorctl("status").stdout))
        < 2
    ):
        assert time.monotonic() < deadline, installation.supervisorctl("status").stdout
        time.sleep(0.2)


def _snapshot(prefix: Path) -> dict[str, tuple[float, str]]:
    """Every installed file's mtime and mode (not the state, logs and pid files the running
    processes write)."""
    found = {}
    for path in sorted(prefix.rglob("*")):
        relative = path.relative_to(prefix)
        if relative.parts[0] in ("data", "log", "run") and path.is_file():
            continue
        if "__pycache__" in relative.parts:
            continue
        if path.is_file() or path.is_dir():
            found[str(relative)] = (path.stat().st_mtime, mode(path))
    return found


def test_a_second_deploy_changes_nothing(installation: Installation) -> None:
    prefix = installation.prefix
    before = _snapshot(prefix)
    pids = (installation.pid(1), installation.pid(2))
    supervisord = (prefix / "run" / "supervisord.pid").read_text()
    result = deploy("--prefix", prefix, "--port", installation.port, "--http-port",
                    installation.http_port)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy: nothing changed" in result.stdout
    assert "run:" not in result.stdout
    assert _snapshot(prefix) == before
    assert (installation.pid(1), installation.pid(2)) == pids
    assert (prefix / "run" / "supervisord.pid").read_text() == supervisord


def test_a_dry_run_prints_every_step_and_changes_nothing(
    installation: Installation, tmp_path: Path
) -> None:
    # On the installation: nothing would change.
    again = deploy("--prefix", installation.prefix, "--dry-run")
    assert again.returncode == 0, again.stderr
    assert "deploy: dry run done, 0 step(s) would change something" in again.stdout
    # Into a fresh prefix: every step, and nothing made.
    fresh = tmp_path / "fresh"
    dry = deploy("--prefix", fresh, "--user", "aether-test-nobody", "--init", "systemd",
                 "--unit-dir", tmp_path / "units", "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    for expected in (
        "would: useradd --system --user-group",
        f"would: install -d -m 0750 -o aether-test-nobody -g aether-test-nobody {fresh}/data",
        f"would: python3 -m venv {fresh}/venv",
        f"would: {fresh}/venv/bin/pip install",
        f"would: {fresh}/venv/bin/aether init {fresh}/etc",
        "would: secrets in",
        f"would: install -m 0755 -o root -g root {ROOT}/ops/healthcheck {fresh}/bin/healthcheck",
        f"would: write {tmp_path}/units/aether@.service",
        "User=aether-test-nobody",
        "would: systemctl daemon-reload",
        "would: systemctl enable --now aether@1",
        f"would: {fresh}/bin/healthcheck --instance 2",
    ):
        assert expected in out, expected
    assert not fresh.exists()
    assert not (tmp_path / "units").exists()


def test_supervisord_restarts_a_killed_process_and_its_clients_come_back(
    installation: Installation,
) -> None:
    old = installation.pid(1)
    limits = Path(f"/proc/{old}/limits").read_text()
    assert re.search(r"Max data size\s+2147483648", limits)  # prlimit in the program's command
    open_files = re.search(r"Max open files\s+(\d+)", limits)
    assert open_files is not None
    assert int(open_files.group(1)) >= 16384  # supervisord's minfds (raised to it if lower)
    url = f"ws://127.0.0.1:{installation.port + 1}/connection/websocket"
    token = mint_token(installation.secret("hmac.secret"), {"sub": "kill-test"})

    async def scenario() -> None:
        events = ClientRecorder()
        client = Client(url, token=token, events=events)
        await client.connect()
        await events.wait("connected")
        os.kill(old, signal.SIGKILL)
        # The SDK reconnects (with its back-off) once supervisord has restarted the process.
        await events.wait("connecting", lambda ctx: ctx.reason == "transport closed", within=10)
        await events.wait("connected", count=2, within=30)
        response = await asyncio.to_thread(
            httpx.post, f"http://127.0.0.1:{installation.http_port + 1}/api/admin/connections",
            json={"user": "kill-test"}, headers={"X-API-Key": installation.secret("api-ops.key")},
            timeout=10,
        )  # fmt: skip
        assert response.json()["total"] == 1, response.text
        await client.disconnect()

    asyncio.run(scenario())
    assert installation.pid(1) != old
    assert installation.healthcheck("--instance", "1").returncode == 0


def test_just_recipes_reload_drain_log_and_check_the_installation(
    installation: Installation,
) -> None:
    inst = installation
    listed = inst.just("--list").stdout
    for recipe in ("init", "deploy", "healthcheck", "reload", "drain", "logs"):
        assert re.search(rf"^\s+{recipe}\b.*# \S", listed, re.M), recipe
    reloaded = inst.just("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "aether:aether-1: signalled" in reloaded.stdout
    deadline = time.monotonic() + WAIT
    while "configuration reloaded" not in (inst.prefix / "log" / "aether-2.log").read_text():
        assert time.monotonic() < deadline, "no reload logged"
        time.sleep(0.1)
    logs = inst.just("logs", "-n", "3")
    assert logs.returncode == 0, logs.stderr
    assert "aether-1.log" in logs.stdout
    assert "configuration reloaded" in logs.stdout
    ok = inst.just("healthcheck", "--instance", "1")
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("AETHER OK - 7 steps OK")
    # A drain switches maintenance on: /ready answers 503 and the health check is CRITICAL,
    # naming the step.
    drained = inst.just("drain", "--rate", "1000")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.count("drain ") == 2
    for instance in ("1", "2"):
        failed = inst.healthcheck("--instance", instance)
        assert failed.returncode == 2, failed.stdout
        assert failed.stdout.startswith("AETHER CRITICAL - ready: HTTP 503 not ready"), (
            failed.stdout
        )
        assert "maintenance" in failed.stdout
        off = inst.aether("admin", "maintenance", "off", "-c", inst.config, "--instance", instance)
        assert off.returncode == 0, off.stderr
        assert inst.healthcheck("--instance", instance).returncode == 0


def test_the_health_check_is_critical_while_a_process_is_down(installation: Installation) -> None:
    assert installation.supervisorctl("stop", "aether:aether-2").returncode == 0
    try:
        down = installation.healthcheck("--instance", "2", "--json")
        assert down.returncode == 2
        assert '"failed_step":"health"' in down.stdout
        assert installation.healthcheck("--instance", "1").returncode == 0
    finally:
        assert installation.supervisorctl("start", "aether:aether-2").returncode == 0


# --- systemd -----------------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path is not None, (
        "systemd-analyze not found: install Debian's `systemd` package (.ci/run does it). The "
        "units of ops/systemd cannot be checked without it."
    )
    return path


def unit_commands(unit: str, instance: str) -> dict[str, list[str]]:
    """The command lines of a unit's Exec* settings, %i and $MAINPID left for the caller."""
    commands = {}
    for line in unit.splitlines():
        match = re.match(r"(Exec\w+)=(.*)", line)
        if match:
            commands[match.group(1)] = shlex.split(match.group(2).replace("%i", instance))
    return commands


def test_the_systemd_units_verify_and_their_commands_run(
    installation: Installation, tmp_path: Path
) -> None:
    inst, units = installation, tmp_path / "units"
    installed = deploy("--prefix", inst.prefix, "--init", "systemd", "--unit-dir", units,
                       "--no-start")  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = sorted(p.name for p in units.iterdir())
    assert names == ["aether.service", "aether.target", "aether@.service"]
    print("systemd is not PID 1 here: the units are verified by systemd-analyze and their "
          "commands run directly, not started by systemd")  # fmt: skip
    shutil.copy(units / "aether@.service", units / "aether@1.service")
    verify = run(systemd_analyze(), "verify", units / "aether.service", units / "aether@1.service",
                 units / "aether.target")  # fmt: skip
    # verify exits 0 on unknown keys and bad values too: its warnings must be none at all.
    problems = [line for line in verify.stderr.splitlines() if "aether" in line]
    assert verify.returncode == 0, verify.stderr
    assert problems == []
    text = (units / "aether@.service").read_text()
    assert f"ExecStart={inst.prefix}/venv/bin/aether serve" in text
    assert "TimeoutStopSec=30" in text
    assert "LimitNOFILE=65536" in text
    assert "MemoryMax=2G" in text
    # The unit's commands as systemd runs them, for process 1 (supervisor's stopped first).
    assert inst.supervisorctl("stop", "aether:*").returncode == 0
    commands = unit_commands(text, "1")
    assert run(*commands["ExecStartPre"]).returncode == 0
    log = tmp_path / "journal.log"
    with log.open("wb") as journal:
        process = subprocess.Popen(commands["ExecStart"], stdout=journal, stderr=journal)
    try:
        deadline = time.monotonic() + WAIT
        while "listening on" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert inst.healthcheck("--instance", "1").returncode == 0
        reload = [a.replace("$MAINPID", str(process.pid)) for a in commands["ExecReload"]]
        assert run(*reload).returncode == 0
        while "configuration reloaded" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        kill_signal = re.search(r"KillSignal=(\w+)", text)
        assert kill_signal is not None
        process.send_signal(getattr(signal, kill_signal.group(1)))
        assert process.wait(timeout=30) == 0  # within TimeoutStopSec
        assert "history snapshot saved" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
