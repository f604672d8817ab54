"""The backup files under ops/: the systemd timer and service verified by `systemd-analyze` and
their commands run as systemd would run them, the cron line run by `sh` as cron would, and
`just backup`; each against a real S3 API on loopback (moto) and checked in the bucket."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from backup_helpers import MotoServer, Node, running_moto

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture
def installed(tmp_path: Path, moto: MotoServer) -> tuple[Path, Node]:
    """A prefix laid out as ops/deploy.sh makes one: venv/bin/aether, etc/config.toml, data/."""
    prefix = tmp_path / "prefix"
    node = Node(prefix / "node", moto, moto.new_bucket())
    node.fill_sqlite()
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "aether").symlink_to(BIN / "aether")
    (prefix / "etc").symlink_to(node.etc)
    (prefix / "data").symlink_to(node.data_dir)
    (prefix / "log").mkdir()
    return prefix, node


def render(text: str, prefix: Path) -> str:
    """What ops/deploy.sh does to a unit: its prefix; no User=/Group= (the tests' own user)."""
    text = text.replace("/opt/aether", str(prefix))
    return re.sub(r"^(User|Group)=aether\n", "", text, flags=re.M)


def run(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd, env=env)  # fmt: skip


def drills(node: Node) -> list[dict[str, object]]:
    s3 = node.moto.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=node.bucket).get("Contents", [])]
    return [orjson.loads(s3.get_object(Bucket=node.bucket, Key=k)["Body"].read())
            for k in keys if k.endswith(".drill.json")]  # fmt: skip


def test_the_timer_and_service_verify_and_their_commands_back_up(
    installed: tuple[Path, Node], tmp_path: Path
) -> None:
    prefix, node = installed
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze: Debian's `systemd` package (.ci/run installs it)"
    units = tmp_path / "units"
    units.mkdir()
    for name in ("aether-backup.service", "aether-backup.timer"):
        (units / name).write_text(render((OPS / "systemd" / name).read_text(), prefix))
    verify = run(analyze, "verify", units / "aether-backup.service", units / "aether-backup.timer")
    assert verify.returncode == 0, verify.stderr
    assert [line for line in verify.stderr.splitlines() if "aether" in line] == []
    service = (units / "aether-backup.service").read_text()
    commands = [shlex.split(line.split("=", 1)[1]) for line in service.splitlines()
                if line.startswith("ExecStart=")]  # fmt: skip
    assert [c[2] for c in commands] == ["create", "verify", "prune"]
    print("systemd is not PID 1 here: the unit's commands run directly, in its order")
    for command in commands:
        done = run(*command, cwd=prefix / "data")
        assert done.returncode == 0, done.stdout + done.stderr
    assert "verified; RPO" in run(*commands[1]).stdout
    assert [d["ok"] for d in drills(node)] == [True]
    assert "OnCalendar=*-*-* 03:15:00" in (units / "aether-backup.timer").read_text()


def test_the_cron_line_runs_the_same_commands(installed: tuple[Path, Node]) -> None:
    prefix, node = installed
    line = next(entry for entry in (OPS / "cron" / "aether-backup").read_text().splitlines()
                if entry and entry[0].isdigit())  # fmt: skip
    fields = line.split(None, 6)
    assert fields[:6] == ["15", "3", "*", "*", "*", "aether"]
    command = fields[6]
    service = (OPS / "systemd" / "aether-backup.service").read_text()
    for exec_start in re.findall(r"^ExecStart=(.*)$", service, re.M):
        assert exec_start in command
    # Run as cron would (sh), without the random delay, into the installation's log.
    done = run("sh", "-c", command.replace("0-1800", "0-0").replace("/opt/aether", str(prefix)))
    assert done.returncode == 0, done.stderr
    log = (prefix / "log" / "backup.log").read_text()
    assert "verified; RPO" in log
    assert "deleted 0 backups" in log
    assert [d["ok"] for d in drills(node)] == [True]


def test_just_backup_creates_verifies_and_prunes(installed: tuple[Path, Node]) -> None:
    _prefix, node = installed
    just = shutil.which("just", path=str(BIN))
    assert just is not None
    env = {**os.environ, "NO_COLOR": "1"}
    done = run(just, "backup", "-c", node.config_path, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^backup \S+: .* uploaded to s3://", done.stdout, re.M)
    assert "verified; RPO" in done.stdout
    assert [d["ok"] for d in drills(node)] == [True]


def test_the_readme_commands_back_up_and_verify_against_a_local_s3(tmp_path: Path) -> None:
    """The README's "Try it" block as written, but with this test's own moto server (on a free
    port, started and stopped here) instead of the block's background one on port 5000."""
    text = (ROOT / "README.md").read_text()
    block = text.split("Try it against a local S3 endpoint", 1)[1].split("```sh\n", 1)[1]
    lines = block.split("```", 1)[0].strip().splitlines()
    assert any("moto_server -p 5000" in line for line in lines)
    with running_moto() as s3:
        script = "\n".join(
            line.replace(".venv/bin/", f"{BIN}/").replace("127.0.0.1:5000", f"127.0.0.1:{s3.port}")
            for line in lines
            if "moto_server" not in line and not line.startswith("sleep")
        )
        done = run("bash", "-euc", script, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^backup \S+: .* uploaded to s3://aether/aether/\S+\.aeb at ", done.stdout,
                     re.M), done.stdout  # fmt: skip
    assert re.search(r"^backup \S+: verified; RPO [\d.]+ s, RTO [\d.]+ s$", done.stdout, re.M)
