# Aether's everyday commands. `just` itself comes from the dev extra (PyPI rust-just):
#   python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/just --list

set positional-arguments

bin := justfile_directory() / ".venv" / "bin"

# list the recipes
default:
    @just --list

# create .venv and install Aether with its dev tools
install:
    test -x {{bin}}/python || python3 -m venv .venv
    {{bin}}/pip install -q -e '.[dev]'

# run the server (default: ./config.toml)
serve *args:
    {{bin}}/aether serve "$@"

# validate a config file without starting anything
check-config *args:
    {{bin}}/aether check-config "$@"

# mint a development JWT from the configured HMAC key, e.g. `just token --user 42`
token *args:
    {{bin}}/aether token "$@"

# run the whole test suite with branch coverage (fails when a test fails, none ran, or coverage
# is below the floor in pyproject.toml); `.venv/bin/pytest` alone runs without coverage
test *args:
    {{bin}}/pytest --cov --cov-report=term "$@"

# everything CI checks: lint, then the whole test suite with coverage
check: lint test

# benchmark Aether against its peers (~2 min; ops/bench/README.md), e.g. `just bench --smoke`
bench *args:
    {{bin}}/pip install -q -e '.[bench]'
    {{bin}}/python ops/bench/run.py "$@"

# ruff (lint + format check) and mypy --strict
lint:
    {{bin}}/ruff check aether_trio tests
    {{bin}}/ruff format --check aether_trio tests
    {{bin}}/mypy

# format the code in place
fmt:
    {{bin}}/ruff check --fix aether_trio tests
    {{bin}}/ruff format aether_trio tests
