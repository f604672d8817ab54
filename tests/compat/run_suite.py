"""Run the vendored centrifuge-python integration suite (unchanged, with unittest, its own
runner: `python -m unittest discover -s tests` in its Makefile) against the Aether whose
WebSocket URL is in AETHER_URL, and write every outcome as JSON lines to the file named by
the first argument: {"test": id, "subtest": params or null, "outcome": ..., "detail": ...}.

The suite expects the server of its docker-compose.yml at localhost:8000: the client address
and the suite's preflight URL are pointed at AETHER_URL instead (nothing else is changed).
Run by tests/test_compat.py; by hand:

    AETHER_URL=ws://127.0.0.1:8000/connection/websocket \\
        python tests/compat/run_suite.py /tmp/outcomes.jsonl
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
import unittest
from pathlib import Path
from typing import Any

import centrifuge.client

SUITE = Path(__file__).parent / "centrifuge_python"
EXPECTED = "ws://localhost:8000/connection/websocket"
URL = os.environ["AETHER_URL"]


def _point_at_aether() -> None:
    original = centrifuge.client.Client.__init__

    def init(self: Any, address: str, *args: Any, **kwargs: Any) -> None:
        original(self, URL if address == EXPECTED else address, *args, **kwargs)

    centrifuge.client.Client.__init__ = init
    preflight = importlib.import_module("tests.centrifugo")  # the suite's own module
    http_url = URL.removesuffix("/connection/websocket").replace("ws://", "http://")
    setattr(preflight, "CENTRIFUGO_HTTP_URL", http_url)  # noqa: B010 (a module's global)


class Recorder(unittest.TextTestResult):
    """Every test's and every subtest's outcome, as JSON-able records."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._subtest_failed: set[str] = set()

    def _add(self, test: Any, outcome: str, err: Any = None, subtest: Any = None) -> None:
        detail = ""
        if err is not None:
            # The exception's last line (type and message), not the whole traceback.
            detail = traceback.format_exception_only(err[0], err[1])[-1].strip()
        params = dict(subtest.params) if subtest is not None else None
        self.records.append(
            {
                "test": test.id(),
                "subtest": {k: str(v) for k, v in params.items()} if params else None,
                "outcome": outcome,
                "detail": detail[:300],
            }
        )

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        if test.id() not in self._subtest_failed:
            self._add(test, "passed")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._add(test, "failed", err)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._add(test, "error", err)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is None:
            self._add(test, "passed", subtest=subtest)
        else:
            self._subtest_failed.add(test.id())
            failed = issubclass(err[0], test.failureException)
            self._add(test, "failed" if failed else "error", err, subtest)


def main() -> int:
    sys.path.insert(0, str(SUITE))
    os.chdir(SUITE)
    _point_at_aether()
    suite = unittest.defaultTestLoader.discover("tests", pattern="test_client.py")
    runner = unittest.TextTestRunner(resultclass=Recorder, verbosity=1)
    result = runner.run(suite)
    assert isinstance(result, Recorder)
    with open(sys.argv[1], "w") as out:
        for record in result.records:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
