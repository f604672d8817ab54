"""Releases of Aether into the soak's prefix through ops/deploy.sh, as an operator deploys them.

`deploy(prefix, release, processes)` copies the source tree (the package, its build files and
the ops/ files deploy.sh installs) into `prefix/releases/N`, marks it with its release number (a
file the deploy's source hash covers, so every release is a change to install), and runs
`ops/deploy.sh --prefix PREFIX --source COPY --init supervisor --no-start`: the deploy installs
the package into `prefix/venv`, keeps the existing configuration, checks it for every process,
installs the health-check script and renders the supervisor files. Starting and restarting are
the caller's: at the first release the deployment starts supervisord on the rendered files; later
ones are rolled one process at a time (rolling.py), which deploy.sh's own step 8 does not do
(it restarts `aether:*` at once).

A copy, not the checkout itself: pip builds in the source directory, and two soaks (or a soak
and the engineer) building in one checkout would race. The prefix's venv is made here, before the
first deploy, without pip and with the harness venv's site-packages on its path (a .pth file):
deploy.sh then finds it ready (step 3) and its pip install (step 4) builds and installs only
Aether, every dependency being satisfied already, in seconds and without a package index.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

__all__ = ["deploy", "prefix_venv"]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "ops" / "deploy.sh"
PIP_LAUNCHER = """#!{python}
import sys
from pip._internal.cli.main import main
sys.exit(main())
"""


def prefix_venv(prefix: Path) -> Path:
    """`prefix/venv`, sharing the harness's installed packages (see the module's docstring)."""
    venv = prefix / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    shared = sysconfig.get_paths()["purelib"]  # the harness venv's
    (Path(found.stdout.strip()) / "soak-shared.pth").write_text(shared + "\n")
    pip = venv / "bin" / "pip"
    pip.write_text(PIP_LAUNCHER.format(python=python))
    pip.chmod(0o755)
    return venv


def _source_copy(prefix: Path, release: int) -> Path:
    copy = prefix / "releases" / str(release)
    shutil.copytree(ROOT / "aether_trio", copy / "aether_trio",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "ops/healthcheck"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for name in ("ops/supervisor", "ops/systemd"):  # the files deploy.sh renders
        shutil.copytree(ROOT / name, copy / name)
    # Not a module (package data lists none of it): it changes the source hash, not the code.
    (copy / "aether_trio" / "SOAK_RELEASE").write_text(f"{release}\n")
    return copy


def deploy(prefix: Path, release: int, processes: int, *, timeout: float = 300) -> dict[str, Any]:
    """Release `release` into `prefix` (installed, not started); what deploy.sh said and did."""
    started = time.monotonic()
    source = _source_copy(prefix, release)
    result = subprocess.run(
        ["bash", str(DEPLOY), "--prefix", str(prefix), "--source", str(source), "--init",
         "supervisor", "--processes", str(processes), "--no-start"],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    return {
        "release": release,
        "exit": result.returncode,
        "seconds": round(time.monotonic() - started, 2),
        "changed": [line.strip()[5:] for line in lines if line.strip().startswith("run: ")],
        "said": (lines[-1] if lines else "") + result.stderr[-500:],
        "installed": (prefix / "venv" / ".aether-source").read_text().strip()
        if (prefix / "venv" / ".aether-source").exists()
        else None,
    }
