"""The developer tooling CI relies on: `just check` runs lint and the suite with coverage, the
coverage floor is configured, and the pre-commit hooks are valid and use the project's venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def dry_run(recipe: str) -> str:
    just = shutil.which("just", path=str(BIN)) or shutil.which("just")
    assert just is not None, "`just` comes with the dev extra (rust-just)"
    result = subprocess.run(
        [just, "--dry-run", recipe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr + result.stdout  # just prints the commands on stderr


def test_just_check_runs_the_linters_and_the_suite_with_coverage() -> None:
    commands = dry_run("check")
    for command in ("ruff check", "ruff format --check", "mypy", "pytest --cov"):
        assert command in commands, commands


def test_the_coverage_floor_is_configured_and_branch_coverage_is_on() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["coverage"]
    assert config["run"]["branch"] is True
    assert "subprocess" in config["run"]["patch"]
    assert 90 <= config["report"]["fail_under"] <= 100


def test_the_pre_commit_hooks_are_valid_and_local() -> None:
    config = ROOT / ".pre-commit-config.yaml"
    result = subprocess.run(
        [str(BIN / "pre-commit"), "validate-config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "repo: local" in text
    assert "https://" not in text
    for tool in ("ruff", "mypy"):
        assert f"entry: .venv/bin/{tool}" in text
