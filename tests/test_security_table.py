"""docs/security.md cannot drift from the code: every test its tables name exists (as pytest
collects it, parametrized cases included), every default its limits table gives is the default in
`aether_trio.config`, and every `[limits]` option is listed."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from aether_trio.config import Config, LimitsConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py::[^`\s]+)`")


def _section(title: str) -> str:
    """The text of the `## title` section (up to the next `## `)."""
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _rows(section: str) -> list[list[str]]:
    """The body rows of every markdown table in `section`, as lists of cells."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in ("input", "option"):  # header rows
            continue
        rows.append(cells)
    return rows


BAD_INPUT_ROWS = _rows(_section("Bad inputs and their answers"))
LIMIT_ROWS = _rows(_section("Limits and their defaults"))


def test_the_tables_were_found() -> None:
    assert len(BAD_INPUT_ROWS) >= 40
    assert len(LIMIT_ROWS) >= 30


def test_every_bad_input_row_names_a_test_and_an_answer() -> None:
    for cells in BAD_INPUT_ROWS:
        assert len(cells) == 3, cells
        what, answer, tests = cells
        assert what, cells
        assert answer, cells
        assert TEST_ID.findall(tests), f"no test named for {what!r}"


@pytest.fixture(scope="module")
def collected() -> set[str]:
    """The node ids pytest collects from every test file the document names."""
    cited = {test_id for cells in BAD_INPUT_ROWS for test_id in TEST_ID.findall(cells[2])}
    files = sorted({test_id.partition("::")[0] for test_id in cited})
    missing_files = [f for f in files if not (ROOT / f).is_file()]
    assert missing_files == []
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


def _exists(test_id: str, collected: set[str]) -> bool:
    # `file::test` names all of its parametrized cases (and a class, all of its tests);
    # `file::test[case]` one of them.
    return test_id in collected or any(
        node.startswith((test_id + "[", test_id + "::")) for node in collected
    )


def test_every_test_the_document_names_exists(collected: set[str]) -> None:
    cited = [test_id for cells in BAD_INPUT_ROWS for test_id in TEST_ID.findall(cells[2])]
    assert [test_id for test_id in cited if not _exists(test_id, collected)] == []


def test_the_existence_check_notices_a_missing_test(collected: set[str]) -> None:
    assert _exists("tests/test_tls.py::test_tls_1_1_client_is_refused", collected)
    assert not _exists("tests/test_tls.py::test_tls_1_1_client", collected)
    assert not _exists("tests/test_tls.py::test_tls_1_1_client_is_refused[nope]", collected)


def _default(path: str) -> Any:
    value: Any = Config()
    for part in path.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def test_every_default_in_the_limits_table_is_the_codes() -> None:
    wrong = []
    for cells in LIMIT_ROWS:
        path, default = cells[0].strip("`"), cells[1].strip("`")
        documented = tomllib.loads(f"value = {default}")["value"]
        if documented != _default(path) or type(documented) is not type(_default(path)):
            wrong.append(f"{path}: documented {default}, the code says {_default(path)!r}")
    assert wrong == []


def test_every_limits_option_is_in_the_limits_table() -> None:
    documented = {cells[0].strip("`") for cells in LIMIT_ROWS}
    missing = [
        f"limits.{field.name}"
        for field in attrs.fields(LimitsConfig)
        if f"limits.{field.name}" not in documented
    ]
    assert missing == []


def test_the_readme_links_the_document() -> None:
    assert "(docs/security.md)" in (ROOT / "README.md").read_text()
