"""The documented config.toml at the repo root, and how `load_config` reports bad configuration."""

from __future__ import annotations

import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest

from aether_trio.config import (
    ChannelConfig,
    Config,
    ConfigError,
    TokenConfig,
    load_config,
    parse_config,
)
from aether_trio.protocol.options import ChannelOptions, Namespace

CONFIG_TOML = Path(__file__).resolve().parent.parent / "config.toml"
DEV_SECRET = "aether-development-secret-change-me-before-production"


def _file_data() -> dict[str, Any]:
    with CONFIG_TOML.open("rb") as fh:
        return tomllib.load(fh)


def _load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


# --- config.toml --------------------------------------------------------------------------------


def test_config_toml_is_the_defaults_plus_the_documented_dev_choices() -> None:
    readme_tour = ChannelOptions(
        presence=True,
        join_leave=True,
        history_size=100,
        history_ttl=300.0,
        allow_recovery=True,
        allow_positioning=True,
        allow_subscribe_for_client=True,
        allow_publish_for_client=True,
        allow_history_for_client=True,
        allow_presence_for_client=True,
    )
    chat = Namespace(
        name="chat",
        presence=True,
        join_leave=True,
        force_push_join_leave=True,
        history_size=500,
        history_ttl=3600.0,
        force_recovery=True,
        allow_subscribe_for_client=True,
        allow_publish_for_client=True,
        allow_history_for_client=True,
        allow_presence_for_client=True,
        allow_user_limited_channels=True,
    )
    expected = attrs.evolve(
        Config(),
        token=TokenConfig(hmac_secret=DEV_SECRET),
        channel=ChannelConfig(without_namespace=readme_tour, namespaces=(chat,)),
    )
    assert load_config(CONFIG_TOML) == expected


def test_config_toml_spot_checks() -> None:
    config = load_config(CONFIG_TOML)
    assert config.token.hmac_secret == DEV_SECRET
    assert config.token.has_any_key
    # [subscription_token] is present but empty: the [token] keys verify subscription tokens.
    assert not config.subscription_token.has_any_key
    assert config.subscription_token == TokenConfig()
    assert config.channel.without_namespace.history_enabled
    assert [ns.name for ns in config.channel.namespaces] == ["chat"]
    chat = config.channel.namespaces[0]
    assert chat.history_enabled
    assert (chat.history_size, chat.history_ttl) == (500, 3600.0)
    assert chat.allow_user_limited_channels
    assert chat.force_recovery
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.engine.type == "memory"


def _assert_mirrors(in_file: Any, loaded: Any, path: str) -> None:
    if isinstance(in_file, dict):
        for key, value in in_file.items():
            _assert_mirrors(value, getattr(loaded, key), f"{path}.{key}".lstrip("."))
    elif isinstance(in_file, list):
        assert len(loaded) == len(in_file), path
        for i, (value, item) in enumerate(zip(in_file, loaded, strict=True)):
            _assert_mirrors(value, item, f"{path}[{i}]")
    else:
        assert loaded == in_file, path


def test_loaded_config_holds_every_value_the_file_says() -> None:
    _assert_mirrors(_file_data(), load_config(CONFIG_TOML), "")


def _undocumented(cls: type, table: dict[str, Any], path: str) -> list[str]:
    """Key paths of `cls`'s fields (recursively) that `table` does not list."""
    hints = typing.get_type_hints(cls)
    missing: list[str] = []
    for field in attrs.fields(cls):
        key = f"{path}.{field.name}" if path else field.name
        if key in ("subscription_token", "channel.namespaces", "proxies"):
            continue  # deliberately empty / examples only: checked by their own tests
        if field.name not in table:
            missing.append(key)
        elif attrs.has(hints[field.name]):
            missing.extend(_undocumented(hints[field.name], table[field.name], key))
    return missing


def test_every_option_is_documented_in_config_toml() -> None:
    assert _undocumented(Config, _file_data(), "") == []


def test_the_field_walk_notices_a_missing_option() -> None:
    # The walk above must be able to fail: drop one nested key and one whole section.
    data = _file_data()
    del data["channel"]["without_namespace"]["channel_regex"]
    del data["log"]
    assert _undocumented(Config, data, "") == ["channel.without_namespace.channel_regex", "log"]


def test_without_namespace_lists_every_channel_option() -> None:
    table = _file_data()["channel"]["without_namespace"]
    assert set(table) == {f.name for f in attrs.fields(ChannelOptions)}


def test_subscription_token_section_is_present_and_empty() -> None:
    assert _file_data()["subscription_token"] == {}


def test_example_namespaces_name_themselves_and_use_only_namespace_options() -> None:
    namespaces = _file_data()["channel"]["namespaces"]
    assert namespaces
    allowed = {f.name for f in attrs.fields(Namespace)}
    for ns in namespaces:
        assert "name" in ns
        assert set(ns) <= allowed


SECTION = re.compile(r"^\[\[?\s*([\w.]+)\s*\]\]?")
ASSIGNMENT = re.compile(r"^(\w+)\s*=\s*(.*)$")


def _option_class(section: str) -> type:
    cls: type = Config
    for part in section.split("."):
        cls = typing.get_type_hints(cls)[part]
    return cls


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def test_config_toml_comments_every_option_with_its_default() -> None:
    lines = CONFIG_TOML.read_text().splitlines()
    data = _file_data()
    section: str | None = None
    in_array = False
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if header := SECTION.match(line):
            section, in_array = header.group(1), line.startswith("[[")
            continue
        assignment = ASSIGNMENT.match(line)
        if not assignment:
            continue
        key = assignment.group(1)
        where = f"line {number}: {section}.{key}"
        block: list[str] = []
        for previous in reversed(lines[: number - 1]):
            if not previous.startswith("#"):
                break
            block.append(previous)
        comment = "\n".join(block)
        if section is None:
            problems.append(f"{where}: key outside any section")
        elif in_array:
            # Example namespace entries: the options are documented under without_namespace.
            if not block and "#" not in assignment.group(2):
                problems.append(f"{where}: no comment")
        else:
            field = attrs.fields_dict(_option_class(section))[key]
            value = data
            for part in section.split("."):
                value = value[part]
            if not comment:
                problems.append(f"{where}: no comment above it")
            elif isinstance(field.default, tuple):
                if "Default:" not in comment:
                    problems.append(f"{where}: comment does not give the default")
            elif f"Default: {_toml_literal(field.default)}" not in comment:
                problems.append(f"{where}: comment lacks 'Default: {_toml_literal(field.default)}'")
            in_file = tuple(value[key]) if isinstance(value[key], list) else value[key]
            if in_file != field.default and "DEVELOPMENT CHOICE" not in comment:
                problems.append(f"{where}: differs from the default without saying why")
    assert problems == []


def test_config_toml_lines_fit_in_100_columns() -> None:
    long = [n for n, line in enumerate(CONFIG_TOML.read_text().splitlines(), 1) if len(line) > 100]
    assert long == []


# --- defaults and accepted values ---------------------------------------------------------------


def test_no_config_file_means_the_defaults() -> None:
    assert load_config(None) == Config()


def test_empty_file_means_the_defaults(tmp_path: Path) -> None:
    assert _load_text(tmp_path, "") == Config()
    assert parse_config({}) == Config()


def test_edge_values_are_accepted(tmp_path: Path) -> None:
    config = _load_text(
        tmp_path,
        "[server]\nport = 65535\n"
        # ping_interval 0 disables pings, so pong_timeout is not compared with it.
        "[client]\nping_interval = 0\npong_timeout = 8\n"
        "[channel.without_namespace]\nhistory_ttl = 300\n"
        '[[channel.namespaces]]\nname = "a.b-c_d"\n'
        '[client.personal_channel]\nenabled = true\nnamespace = "a.b-c_d"\n',
    )
    assert config.server.port == 65535
    assert config.client.ping_interval == 0.0
    # An integer is fine where seconds are expected; it is stored as a float.
    assert type(config.channel.without_namespace.history_ttl) is float
    assert config.client.personal_channel.namespace == "a.b-c_d"


# --- errors -------------------------------------------------------------------------------------

TWO_NAMESPACES = '[[channel.namespaces]]\nname = "chat"\n[[channel.namespaces]]\nname = "feed"\n'

INVALID = [
    pytest.param("bogus = 1\n", "bogus", "unknown key", id="unknown-top-level-key"),
    pytest.param("[srever]\nport = 1\n", "srever", "unknown key", id="unknown-section"),
    pytest.param('[server]\nhots = "x"\n', "server.hots", "unknown key", id="unknown-nested-key"),
    pytest.param(
        "[client.personal_channel]\nenable = true\n",
        "client.personal_channel.enable",
        "unknown key",
        id="unknown-deeply-nested-key",
    ),
    pytest.param(
        '[[channel.namespaces]]\nname = "chat"\nhistroy_size = 5\n',
        "channel.namespaces[0].histroy_size",
        "unknown key",
        id="unknown-namespace-key",
    ),
    pytest.param(
        '[server]\nport = "8000"\n',
        "server.port",
        "expected an integer, got str '8000'",
        id="string-for-int",
    ),
    pytest.param(
        "[channel.without_namespace]\npresence = 1\n",
        "channel.without_namespace.presence",
        "expected true or false, got int 1",
        id="int-for-bool",
    ),
    pytest.param(
        "[client]\nchannel_limit = true\n",
        "client.channel_limit",
        "expected an integer, got bool True",
        id="bool-for-int",
    ),
    pytest.param(
        "[channel.without_namespace]\nhistory_size = 10.5\n",
        "channel.without_namespace.history_size",
        "expected an integer, got float 10.5",
        id="float-for-int",
    ),
    pytest.param(
        "[client]\nping_interval = true\n",
        "client.ping_interval",
        "expected a number, got bool True",
        id="bool-for-float",
    ),
    pytest.param(
        "[server]\nhost = 127\n", "server.host", "expected a string, got int 127", id="int-for-str"
    ),
    pytest.param(
        TWO_NAMESPACES + "history_size = -3\n",
        "channel.namespaces[1].history_size",
        ">= 0, got -3",
        id="negative-history-size-in-second-namespace",
    ),
    pytest.param(
        "[client]\nstale_close_delay = 0\n",
        "client.stale_close_delay",
        "> 0, got 0.0",
        id="zero-where-positive-required",
    ),
    pytest.param(
        '[[channel.namespaces]]\nname = "x"\n',
        "channel.namespaces[0].name",
        "got 'x'",
        id="namespace-name-too-short",
    ),
    pytest.param(
        '[[channel.namespaces]]\nname = "chat:room"\n',
        "channel.namespaces[0].name",
        "got 'chat:room'",
        id="namespace-name-with-colon",
    ),
    pytest.param(
        TWO_NAMESPACES + '[[channel.namespaces]]\nname = "my chat"\n',
        "channel.namespaces[2].name",
        "got 'my chat'",
        id="namespace-name-with-space",
    ),
    pytest.param(
        "[[channel.namespaces]]\npresence = true\n",
        "channel.namespaces[0].name",
        "got ''",
        id="namespace-without-name",
    ),
    pytest.param(
        TWO_NAMESPACES + '[[channel.namespaces]]\nname = "chat"\n',
        "channel.namespaces",
        "duplicate namespace name 'chat'",
        id="duplicate-namespace-names",
    ),
    pytest.param(
        '[channel.without_namespace]\nchannel_regex = "(unclosed"\n',
        "channel.without_namespace.channel_regex",
        "not a valid regular expression",
        id="invalid-channel-regex",
    ),
    pytest.param(
        TWO_NAMESPACES + 'channel_regex = "[a-z"\n',
        "channel.namespaces[1].channel_regex",
        "not a valid regular expression",
        id="invalid-channel-regex-in-namespace",
    ),
    pytest.param(
        "[client]\nping_interval = 10\npong_timeout = 10\n",
        "client.pong_timeout",
        "must be smaller than ping_interval",
        id="pong-timeout-equal-to-ping-interval",
    ),
    pytest.param(
        "[client]\nping_interval = 5\n",
        "client.pong_timeout",
        "must be smaller than ping_interval",
        id="default-pong-timeout-above-ping-interval",
    ),
    pytest.param(
        '[token]\nalgorithms = ["HS256", "none"]\n',
        "token.algorithms",
        "unknown algorithm(s) ['none']",
        id="unknown-algorithm-none",
    ),
    pytest.param(
        '[subscription_token]\nalgorithms = ["none"]\n',
        "subscription_token.algorithms",
        "unknown algorithm(s) ['none']",
        id="unknown-algorithm-none-for-subscription-tokens",
    ),
    pytest.param(
        '[token]\nhmac_secret = "s"\nhmac_secret_file = "secret.txt"\n',
        "token.hmac_secret",
        "give either hmac_secret or hmac_secret_file, not both",
        id="hmac-secret-inline-and-file",
    ),
    pytest.param(
        '[subscription_token]\nrsa_public_key = "k"\nrsa_public_key_file = "k.pem"\n',
        "subscription_token.rsa_public_key",
        "not both",
        id="subscription-key-inline-and-file",
    ),
    pytest.param(
        "[server]\nport = 70000\n",
        "server.port",
        "expected a port number 0..65535, got 70000",
        id="port-too-large",
    ),
    pytest.param(
        "[server]\nport = -1\n",
        "server.port",
        "expected a port number 0..65535, got -1",
        id="port-negative",
    ),
    pytest.param('[log]\nlevel = "verbose"\n', "log.level", "verbose", id="unknown-log-level"),
    pytest.param('[engine]\ntype = "mongo"\n', "engine.type", "mongo", id="unknown-engine"),
    pytest.param(
        '[engine.redis]\naddress = "localhost:6379"\n',
        "engine.redis.address",
        "localhost:6379",
        id="redis-address-without-scheme",
    ),
    pytest.param(
        "[engine.redis]\nio_timeout = 0\n", "engine.redis.io_timeout", "0", id="redis-io-timeout-0"
    ),
    pytest.param(
        '[engine.redis]\naddresses = ["redis://a:1/0", "b:2"]\n',
        "engine.redis.addresses",
        "'b:2'",
        id="redis-shard-address-without-scheme",
    ),
    pytest.param(
        '[engine.redis]\naddresses = ["redis://a:1/0", "redis://a:1/0"]\n',
        "engine.redis.addresses",
        "listed twice",
        id="redis-shard-listed-twice",
    ),
    pytest.param(
        '[engine.redis]\nsentinel_addresses = ["a:26379", "b"]\nsentinel_master_name = "m"\n',
        "engine.redis.sentinel_addresses",
        "expected host:port, got 'b'",
        id="redis-sentinel-without-port",
    ),
    pytest.param(
        '[engine.redis]\nsentinel_addresses = ["a:99999"]\nsentinel_master_name = "m"\n',
        "engine.redis.sentinel_addresses",
        "expected host:port, got 'a:99999'",
        id="redis-sentinel-port-too-large",
    ),
    pytest.param(
        '[engine.redis]\nsentinel_addresses = ["a:26379"]\n',
        "engine.redis.sentinel_master_name",
        "go together",
        id="redis-sentinel-without-master-name",
    ),
    pytest.param(
        '[engine.redis]\nsentinel_master_name = "m"\n',
        "engine.redis.sentinel_addresses",
        "go together",
        id="redis-sentinel-master-name-without-sentinels",
    ),
    pytest.param(
        '[engine.redis]\naddresses = ["redis://a:1/0"]\ncluster_addresses = ["redis://b:1"]\n',
        "engine.redis.cluster_addresses",
        "set at most one of addresses, sentinel_addresses and cluster_addresses",
        id="redis-shards-and-cluster",
    ),
    pytest.param(
        '[engine.redis]\ncluster_addresses = ["redis://b:1"]\nprefix = "a{b}"\n',
        "engine.redis.prefix",
        "no braces",
        id="redis-cluster-prefix-with-braces",
    ),
    pytest.param(
        '[engine.redis]\nhost = "x"\n', "engine.redis.host", "unknown key", id="redis-unknown-key"
    ),
    pytest.param(
        "[api]\nidempotent_result_ttl = -1.0\n",
        "api.idempotent_result_ttl",
        "-1.0",
        id="negative-idempotent-result-ttl",
    ),
    pytest.param(
        '[channel.without_namespace]\npublication_data_format = "xml"\n',
        "channel.without_namespace.publication_data_format",
        "xml",
        id="unknown-publication-data-format",
    ),
    pytest.param(
        TWO_NAMESPACES + '[client.personal_channel]\nenabled = true\nnamespace = "personal"\n',
        "client.personal_channel.namespace",
        "unknown namespace 'personal'",
        id="personal-channel-namespace-does-not-exist",
    ),
]


@pytest.mark.parametrize(("text", "key_path", "detail"), INVALID)
def test_invalid_config_names_the_key_path(
    tmp_path: Path, text: str, key_path: str, detail: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, text)
    message = str(info.value)
    assert f"{key_path}: " in message
    assert detail in message


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, '[server]\nport = "x"\nhost = 1\n[log]\nlevl = "info"\n')
    message = str(info.value)
    for key_path in ("server.port: ", "server.host: ", "log.levl: "):
        assert key_path in message


def test_secret_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, '[token]\nhmac_secret_file = "missing.txt"\n')
    message = str(info.value)
    assert "token.hmac_secret_file: cannot read" in message
    assert str(tmp_path / "missing.txt") in message


def test_secret_files_are_read_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "aether"
    (conf_dir / "secrets").mkdir(parents=True)
    (conf_dir / "secrets" / "hmac.txt").write_text("s3cret-value\n")
    (conf_dir / "secrets" / "sub-hmac.txt").write_text("sub-secret\n\n")
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    (conf_dir / "secrets" / "rsa.pem").write_text(pem)
    path = conf_dir / "config.toml"
    path.write_text(
        '[token]\nhmac_secret_file = "secrets/hmac.txt"\nrsa_public_key_file = "secrets/rsa.pem"\n'
        '[subscription_token]\nhmac_secret_file = "secrets/sub-hmac.txt"\n'
    )
    # A working directory where the relative paths do not exist: they must not be used.
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.token.hmac_secret == "s3cret-value"
    assert config.token.hmac_secret_file == ""
    assert config.token.rsa_public_key == pem  # PEM keys are read as they are
    assert config.token.rsa_public_key_file == ""
    assert config.subscription_token.hmac_secret == "sub-secret"
    assert config.subscription_token.has_any_key


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, "[server\nport = 8000\n")
    message = str(info.value)
    assert str(tmp_path / "config.toml") in message
    assert "not valid TOML" in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"config file not found: {tmp_path / 'nope.toml'}"
