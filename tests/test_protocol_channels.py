"""Channel-name rules (reference 11.1): namespaces, the `$` private prefix, length, ASCII,
channel_regex, user-limited `#` names and personal channels.

Regexes used here are anchored (`^...$`) so the expectations hold whether a regex is applied as a
search (upstream Go `MatchString`) or as a full match.
"""

from __future__ import annotations

import pytest

from aether_trio.protocol.channels import ChannelRules, ResolvedChannel
from aether_trio.protocol.codes import ErrorCode
from aether_trio.protocol.errors import ReplyError
from aether_trio.protocol.options import ChannelOptions, Namespace

WITHOUT_NS = ChannelOptions(presence=True)
CHAT = Namespace(name="chat", history_size=10, history_ttl=60.0)
DIALOG = Namespace(name="dialog", allow_user_limited_channels=True)
PERSONAL = Namespace(name="personal", allow_user_limited_channels=True)
STRICT = Namespace(name="strict", channel_regex=r"^[a-z0-9_]+$")
INTL = Namespace(name="intl", channel_regex=r"^\w+$")
WHOLE = Namespace(name="whole", channel_regex=r"^whole:[a-z]+$")  # would match the full name only
DOTTED = Namespace(name="v1.api")


def make_rules(
    without_namespace: ChannelOptions = WITHOUT_NS, max_length: int = 255
) -> ChannelRules:
    return ChannelRules(
        without_namespace, [CHAT, DIALOG, PERSONAL, STRICT, INTL, WHOLE, DOTTED], max_length
    )


RULES = make_rules()


def _assert_error(rules: ChannelRules, channel: str, code: ErrorCode) -> None:
    with pytest.raises(ReplyError) as info:
        rules.resolve(channel)
    assert info.value.code is code


# --- namespaces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "namespace", "options", "private"),
    [
        ("news", "", WITHOUT_NS, False),
        ("chat:index", "chat", CHAT, False),
        ("chat:a:b", "chat", CHAT, False),  # split on the first ':'
        ("chat:", "chat", CHAT, False),
        ("$news", "", WITHOUT_NS, True),
        ("$chat:secret", "chat", CHAT, True),
        ("$chat:a:b", "chat", CHAT, True),
        ("v1.api:x", "v1.api", DOTTED, False),
        ("news-2024_01.v2", "", WITHOUT_NS, False),
    ],
)
def test_namespace_resolution(
    channel: str, namespace: str, options: ChannelOptions, private: bool
) -> None:
    resolved = RULES.resolve(channel)
    assert resolved.name == channel  # the name itself is never rewritten
    assert resolved.namespace == namespace
    assert resolved.options is options
    assert resolved.private is private
    assert resolved.user_limited is False
    assert resolved.allowed_users == frozenset()


@pytest.mark.parametrize(
    "channel",
    [
        "unknown:x",
        "$unknown:x",
        "x:chat:y",  # namespace is before the FIRST ':'
        "Chat:index",  # namespace names are case-sensitive
        "chat.index:x",
        "$$chat:x",  # only one private prefix is stripped: namespace "$chat"
    ],
)
def test_unknown_namespace_is_102(channel: str) -> None:
    _assert_error(RULES, channel, ErrorCode.UNKNOWN_CHANNEL)


def test_private_prefix_is_stripped_before_namespace_lookup() -> None:
    # Without stripping, "$chat" would be looked up as a namespace and fail with 102.
    resolved = RULES.resolve("$chat:room")
    assert (resolved.namespace, resolved.private, resolved.name) == ("chat", True, "$chat:room")


# --- length and ASCII --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "ok"),
    [
        ("a" * 255, True),
        ("a" * 256, False),
        ("$" + "a" * 254, True),
        ("$" + "a" * 255, False),  # the prefix counts
        ("chat:" + "a" * 250, True),
        ("chat:" + "a" * 251, False),  # the namespace counts
    ],
    ids=["255", "256", "private-255", "private-256", "ns-255", "ns-256"],
)
def test_max_length(channel: str, ok: bool) -> None:
    if ok:
        assert RULES.resolve(channel).name == channel
    else:
        _assert_error(RULES, channel, ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize(("length", "ok"), [(10, True), (11, False)])
def test_max_length_is_configurable(length: int, ok: bool) -> None:
    rules = make_rules(max_length=10)
    channel = "x" * length
    if ok:
        assert rules.resolve(channel).name == channel
    else:
        _assert_error(rules, channel, ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize(
    "channel",
    ["news-é", "привет", "$привет", "chat:ünïcode", "chat:emoji-✓", "dialog:x#42,ü"],
)
def test_non_ascii_without_regex_is_107(channel: str) -> None:
    _assert_error(RULES, channel, ErrorCode.BAD_REQUEST)


# --- channel_regex -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "ok"),
    [
        ("strict:abc_123", True),
        ("$strict:abc", True),
        ("strict:ABC", False),
        ("strict:a-b", False),
        ("strict:", False),
        ("strict:a:b", False),  # the rest "a:b" does not match
        ("intl:привет", True),  # non-ASCII is fine when the regex accepts it
        ("intl:東京", True),
        ("intl:при вет", False),
        ("whole:abc", False),  # regex applies to the part after the namespace, not the full name
    ],
)
def test_channel_regex_matches_the_part_after_the_namespace(channel: str, ok: bool) -> None:
    if ok:
        assert RULES.resolve(channel).name == channel
    else:
        _assert_error(RULES, channel, ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize(
    ("channel", "ok"),
    [("news", True), ("$news", True), ("News", False), ("news1", False), ("новости", True)],
)
def test_channel_regex_without_namespace(channel: str, ok: bool) -> None:
    rules = make_rules(ChannelOptions(channel_regex=r"^(?:[a-z]+|новости)$"))
    if ok:
        resolved = rules.resolve(channel)
        assert (resolved.namespace, resolved.name) == ("", channel)
    else:
        _assert_error(rules, channel, ErrorCode.BAD_REQUEST)


def test_regex_of_one_namespace_does_not_apply_to_another() -> None:
    assert RULES.resolve("chat:ABC-def").namespace == "chat"
    _assert_error(RULES, "strict:ABC-def", ErrorCode.BAD_REQUEST)


# --- user-limited channels ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "users"),
    [
        ("dialog:chat#42,43", {"42", "43"}),
        ("dialog:chat#42", {"42"}),
        ("dialog:#42", {"42"}),
        ("personal:#user-1", {"user-1"}),
        ("dialog:a#b#42,43", {"42", "43"}),  # the part after the LAST '#'
        ("dialog:x#42,,43,", {"42", "43"}),  # empty entries are not users
        ("dialog:x#", set()),
        ("$dialog:x#42", {"42"}),
    ],
)
def test_user_limited_names(channel: str, users: set[str]) -> None:
    resolved = RULES.resolve(channel)
    assert resolved.user_limited is True
    assert resolved.allowed_users == frozenset(users)
    assert resolved.name == channel


def test_user_limited_without_namespace() -> None:
    rules = make_rules(ChannelOptions(allow_user_limited_channels=True))
    resolved = rules.resolve("dialog#42,43")
    assert resolved.namespace == ""
    assert resolved.user_limited is True
    assert resolved.allowed_users == frozenset({"42", "43"})


@pytest.mark.parametrize("channel", ["dialog:plain", "personal:nobody"])
def test_no_hash_is_not_user_limited_even_when_allowed(channel: str) -> None:
    resolved = RULES.resolve(channel)
    assert resolved.user_limited is False
    assert resolved.allowed_users == frozenset()


@pytest.mark.parametrize("channel", ["news#42", "chat:room#42,43", "#42"])
def test_hash_is_a_plain_character_when_option_off(channel: str) -> None:
    resolved = RULES.resolve(channel)
    assert resolved.user_limited is False
    assert resolved.allowed_users == frozenset()
    assert resolved.name == channel


def test_resolved_channel_is_frozen() -> None:
    resolved = RULES.resolve("news")
    assert isinstance(resolved, ResolvedChannel)
    with pytest.raises(AttributeError):
        resolved.private = True  # type: ignore[misc]


# --- personal channels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "user", "expected"),
    [("", "42", "#42"), ("personal", "42", "personal:#42"), ("dialog", "user-1", "dialog:#user-1")],
)
def test_personal_channel_naming(namespace: str, user: str, expected: str) -> None:
    assert RULES.personal_channel(namespace, user) == expected


def test_personal_channel_resolves_to_a_channel_limited_to_its_user() -> None:
    resolved = RULES.resolve(RULES.personal_channel("personal", "42"))
    assert resolved.namespace == "personal"
    assert resolved.user_limited is True
    assert resolved.allowed_users == frozenset({"42"})
