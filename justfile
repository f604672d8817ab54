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

# soak and chaos: two processes over Redis behind nginx under supervisord, faults on a schedule,
# every publication accounted (ops/soak/README.md), e.g. `just soak --smoke`, `just soak --minutes 30`
soak *args:
    {{bin}}/python ops/soak/run.py "$@"

# benchmark Aether against its peers (~2 min; ops/bench/README.md), e.g. `just bench --smoke`
bench *args:
    {{bin}}/pip install -q -e '.[bench]'
    {{bin}}/python ops/bench/run.py "$@"

# the Redis engine with 1 and 2 workers beside the memory engine (burst, paced, capacity, storm;
# a private redis-server): only the Redis section of ops/bench/RESULTS.md is rewritten
bench-redis *args:
    {{bin}}/pip install -q -e '.[bench]'
    {{bin}}/python ops/bench/run.py --redis "$@"

# ruff (lint + format check) and mypy --strict
lint:
    {{bin}}/ruff check aether_trio tests
    {{bin}}/ruff format --check aether_trio tests
    {{bin}}/mypy

# compile the vendored Protobuf schema into the descriptor Aether loads (aether_trio/protocol/proto)
proto:
    {{bin}}/python -m grpc_tools.protoc -I aether_trio/protocol/proto --descriptor_set_out=aether_trio/protocol/proto/client.binpb aether_trio/protocol/proto/client.proto

# format the code in place
fmt:
    {{bin}}/ruff check --fix aether_trio tests
    {{bin}}/ruff format aether_trio tests

# take a backup now, drill it (restore into scratch SQLite and Redis) and prune by [backup] keep_*
backup *args:
    {{bin}}/aether backup create "$@"
    {{bin}}/aether backup verify "$@"
    {{bin}}/aether backup prune "$@"

# --- operations: an installation made by `just deploy` (its prefix: AETHER_PREFIX, default
# /opt/aether). ops/README.md walks through them.

prefix := env_var_or_default("AETHER_PREFIX", "/opt/aether")

# write a production config with fresh secrets (ops/config/production.toml), e.g. `just init /etc/aether`
init *args:
    {{bin}}/aether init "$@"

# install into a prefix (venv, dirs, config, supervisor or systemd) and health-check it (`--help`)
deploy *args:
    ops/deploy.sh "$@"

# probe the running server end to end: exit 0 OK, 1 WARNING, 2 CRITICAL, e.g. `--instance 1`
healthcheck *args:
    #!/usr/bin/env bash
    if [ -x "{{prefix}}/bin/healthcheck" ]; then exec "{{prefix}}/bin/healthcheck" "$@"; fi
    exec ops/healthcheck "$@"

# reload the configuration of every running process (SIGHUP, through supervisord or pid files)
reload:
    ops/aetherctl --prefix "{{prefix}}" reload

# ask every client of every process to reconnect, gradually (`--rate N`, `--wait`)
drain *args:
    ops/aetherctl --prefix "{{prefix}}" drain "$@"

# the processes' logs (`-f` to follow, `-n N` lines): supervisor's files, else the journal
logs *args:
    ops/aetherctl --prefix "{{prefix}}" logs "$@"
