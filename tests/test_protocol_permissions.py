"""Permission decisions of reference 11.3 (first match wins), one allowing and one denying case per
rule, for authenticated ("42") and anonymous ("") users, with and without `client.insecure`."""

from __future__ import annotations

from typing import Any

import pytest

from aether_trio.protocol.channels import ChannelRules, ResolvedChannel
from aether_trio.protocol.codes import ErrorCode
from aether_trio.protocol.errors import ReplyError
from aether_trio.protocol.options import ChannelOptions
from aether_trio.protocol.permissions import (
    check_history,
    check_presence,
    check_publish,
    check_subscribe_without_token,
    grant_join_leave,
    grant_positioned,
    grant_recoverable,
)

USER = "42"
ANON = ""
HISTORY_ON = {"history_size": 10, "history_ttl": 60.0}
DENIED = ErrorCode.PERMISSION_DENIED
NOT_AVAILABLE = ErrorCode.NOT_AVAILABLE


def resolve(channel: str = "news", **options: Any) -> ResolvedChannel:
    return ChannelRules(ChannelOptions(**options), [], 255).resolve(channel)


def _outcome(check: Any, *args: Any) -> ErrorCode | None:
    """None when allowed, else the error code of the ReplyError."""
    try:
        check(*args)
    except ReplyError as exc:
        return exc.code
    return None


# --- subscribe without a token -----------------------------------------------------------------

SUBSCRIBE_CASES: list[tuple[str, str, dict[str, Any], str, bool, ErrorCode | None]] = [
    # (1) private channel without token: 103 in every namespace, whatever else is allowed
    (
        "private-denied", "$news",
        {"allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True},
        USER, False, DENIED,
    ),
    ("private-denied-insecure", "$news", {}, USER, True, DENIED),
    (
        "private-user-limited-denied", "$dialog#42",
        {"allow_user_limited_channels": True}, USER, False, DENIED,
    ),
    (
        "public-same-options-allowed", "news",
        {"allow_subscribe_for_client": True}, USER, False, None,
    ),
    # (3) user-limited channel, user listed
    (
        "user-limited-listed", "dialog#42,43",
        {"allow_user_limited_channels": True}, USER, False, None,
    ),
    (
        "user-limited-listed-second", "dialog#41,42",
        {"allow_user_limited_channels": True}, USER, False, None,
    ),
    (
        "user-limited-not-listed", "dialog#41,43",
        {"allow_user_limited_channels": True}, USER, False, DENIED,
    ),
    (
        "user-limited-anonymous", "dialog#42,",
        {"allow_user_limited_channels": True, "allow_subscribe_for_anonymous": True},
        ANON, False, DENIED,
    ),
    # (5) allow_subscribe_for_client, not for user-limited channels
    ("for-client-user", "news", {"allow_subscribe_for_client": True}, USER, False, None),
    ("for-client-anonymous", "news", {"allow_subscribe_for_client": True}, ANON, False, DENIED),
    (
        "for-client-anonymous-allowed", "news",
        {"allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True},
        ANON, False, None,
    ),
    (
        "for-anonymous-alone", "news",
        {"allow_subscribe_for_anonymous": True}, ANON, False, DENIED,
    ),
    (
        "for-client-user-limited-not-listed", "dialog#43",
        {"allow_subscribe_for_client": True, "allow_user_limited_channels": True},
        USER, False, DENIED,
    ),
    (
        "for-client-hash-plain-when-off", "dialog#43",
        {"allow_subscribe_for_client": True}, USER, False, None,
    ),
    # (6) insecure
    ("nothing-allowed", "news", {}, USER, False, DENIED),
    ("nothing-allowed-insecure", "news", {}, USER, True, None),
    ("nothing-allowed-insecure-anonymous", "news", {}, ANON, True, None),
    (
        "user-limited-not-listed-insecure", "dialog#43",
        {"allow_user_limited_channels": True}, USER, True, None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("channel", "options", "user", "insecure", "expected"),
    [c[1:] for c in SUBSCRIBE_CASES],
    ids=[c[0] for c in SUBSCRIBE_CASES],
)
def test_subscribe_without_token(
    channel: str, options: dict[str, Any], user: str, insecure: bool, expected: ErrorCode | None
) -> None:
    ch = resolve(channel, **options)
    assert _outcome(check_subscribe_without_token, ch, user, insecure) is expected


# --- publish -----------------------------------------------------------------------------------

PUBLISH_CASES: list[tuple[str, dict[str, Any], str, bool, bool, ErrorCode | None]] = [
    # allow_publish_for_client (non-anonymous, or allow_publish_for_anonymous)
    ("for-client-user", {"allow_publish_for_client": True}, USER, False, False, None),
    ("for-client-anonymous", {"allow_publish_for_client": True}, ANON, False, False, DENIED),
    (
        "for-client-anonymous-allowed",
        {"allow_publish_for_client": True, "allow_publish_for_anonymous": True},
        ANON, False, False, None,
    ),
    ("for-anonymous-alone", {"allow_publish_for_anonymous": True}, ANON, False, False, DENIED),
    # allow_publish_for_subscriber and currently subscribed
    ("for-subscriber-subscribed", {"allow_publish_for_subscriber": True}, USER, True, False, None),
    (
        "for-subscriber-not-subscribed",
        {"allow_publish_for_subscriber": True}, USER, False, False, DENIED,
    ),
    (
        "for-subscriber-anonymous-allowed",
        {"allow_publish_for_subscriber": True, "allow_publish_for_anonymous": True},
        ANON, True, False, None,
    ),
    ("subscribed-is-not-enough", {}, USER, True, False, DENIED),
    # insecure
    ("nothing-allowed", {}, USER, False, False, DENIED),
    ("nothing-allowed-insecure", {}, USER, False, True, None),
    ("nothing-allowed-insecure-anonymous", {}, ANON, False, True, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "user", "subscribed", "insecure", "expected"),
    [c[1:] for c in PUBLISH_CASES],
    ids=[c[0] for c in PUBLISH_CASES],
)
def test_publish(
    options: dict[str, Any],
    user: str,
    subscribed: bool,
    insecure: bool,
    expected: ErrorCode | None,
) -> None:
    ch = resolve("news", **options)
    assert _outcome(check_publish, ch, user, subscribed, insecure) is expected


# --- history and presence (same pattern, different switches) -----------------------------------

# (feature options that turn it on, prefix of its permission options, check function)
READ_FEATURES = [
    pytest.param(HISTORY_ON, "allow_history", check_history, id="history"),
    pytest.param({"presence": True}, "allow_presence", check_presence, id="presence"),
]

READ_CASES: list[tuple[str, tuple[str, ...], str, bool, bool, ErrorCode | None]] = [
    ("for-client-user", ("for_client",), USER, False, False, None),
    ("for-client-anonymous", ("for_client",), ANON, False, False, DENIED),
    ("for-client-anonymous-allowed", ("for_client", "for_anonymous"), ANON, False, False, None),
    ("for-subscriber-subscribed", ("for_subscriber",), USER, True, False, None),
    ("for-subscriber-not-subscribed", ("for_subscriber",), USER, False, False, DENIED),
    ("for-subscriber-anonymous", ("for_subscriber",), ANON, True, False, DENIED),
    (
        "for-subscriber-anonymous-allowed",
        ("for_subscriber", "for_anonymous"), ANON, True, False, None,
    ),
    ("for-anonymous-alone", ("for_anonymous",), ANON, True, False, DENIED),
    ("subscribed-is-not-enough", (), USER, True, False, DENIED),
    ("nothing-allowed", (), USER, False, False, DENIED),
    ("nothing-allowed-insecure", (), USER, False, True, None),
    ("nothing-allowed-insecure-anonymous", (), ANON, False, True, None),
]  # fmt: skip


@pytest.mark.parametrize(("feature", "prefix", "check"), READ_FEATURES)
@pytest.mark.parametrize(
    ("grants", "user", "subscribed", "insecure", "expected"),
    [c[1:] for c in READ_CASES],
    ids=[c[0] for c in READ_CASES],
)
def test_history_and_presence(
    feature: dict[str, Any],
    prefix: str,
    check: Any,
    grants: tuple[str, ...],
    user: str,
    subscribed: bool,
    insecure: bool,
    expected: ErrorCode | None,
) -> None:
    options = {**feature, **{f"{prefix}_{grant}": True for grant in grants}}
    ch = resolve("news", **options)
    assert _outcome(check, ch, user, subscribed, insecure) is expected


EVERYTHING_ALLOWED = {
    f"allow_{what}_for_{who}": True
    for what in ("history", "presence")
    for who in ("client", "subscriber", "anonymous")
}


@pytest.mark.parametrize("insecure", [False, True])
@pytest.mark.parametrize(
    "history",
    [{}, {"history_size": 10}, {"history_ttl": 60.0}],
    ids=["off", "size-only", "ttl-only"],
)
def test_history_is_108_when_not_configured(history: dict[str, Any], insecure: bool) -> None:
    ch = resolve("news", **history, **EVERYTHING_ALLOWED)
    assert _outcome(check_history, ch, USER, True, insecure) is NOT_AVAILABLE


@pytest.mark.parametrize("insecure", [False, True])
def test_presence_is_108_when_off(insecure: bool) -> None:
    ch = resolve("news", **EVERYTHING_ALLOWED)
    assert _outcome(check_presence, ch, USER, True, insecure) is NOT_AVAILABLE


@pytest.mark.parametrize(
    ("check", "feature"),
    [(check_history, HISTORY_ON), (check_presence, {"presence": True})],
    ids=["history", "presence"],
)
def test_not_available_is_checked_before_permission(check: Any, feature: dict[str, Any]) -> None:
    # With the feature on, the same denied request is a 103, so the 108 above is about the switch.
    assert _outcome(check, resolve("news"), USER, False, False) is NOT_AVAILABLE
    assert _outcome(check, resolve("news", **feature), USER, False, False) is DENIED


# --- client-requested extras: positioned / recoverable ------------------------------------------

POSITION_GRANTS = [
    pytest.param(grant_positioned, "force_positioning", "allow_positioning", id="positioned"),
    pytest.param(grant_recoverable, "force_recovery", "allow_recovery", id="recoverable"),
]

POSITION_CASES: list[tuple[str, dict[str, Any], tuple[str, ...], str, bool, bool, bool]] = [
    # (id, options, flags among "force"/"allow", user, asked, insecure, granted)
    ("force-not-asked", {}, ("force",), USER, False, False, True),
    ("force-anonymous-not-asked", {}, ("force",), ANON, False, False, True),
    ("allow-asked", {}, ("allow",), USER, True, False, True),
    ("allow-asked-anonymous", {}, ("allow",), ANON, True, False, True),
    ("allow-not-asked", {}, ("allow",), USER, False, False, False),
    ("nothing-asked", {}, (), USER, True, False, False),
    ("history-perm-client", {**HISTORY_ON, "allow_history_for_client": True}, (), USER, True,
     False, True),
    ("history-perm-client-not-asked", {**HISTORY_ON, "allow_history_for_client": True}, (), USER,
     False, False, False),
    ("history-perm-subscriber", {**HISTORY_ON, "allow_history_for_subscriber": True}, (), USER,
     True, False, True),
    ("history-perm-anonymous-denied", {**HISTORY_ON, "allow_history_for_client": True}, (), ANON,
     True, False, False),
    ("history-perm-anonymous-allowed", {**HISTORY_ON, "allow_history_for_client": True,
     "allow_history_for_anonymous": True}, (), ANON, True, False, True),
    ("history-off-perm-client", {"allow_history_for_client": True}, (), USER, True, False, False),
    ("history-on-no-perm", HISTORY_ON, (), USER, True, False, False),
    ("history-on-no-perm-insecure", HISTORY_ON, (), USER, True, True, True),
    ("history-on-insecure-not-asked", HISTORY_ON, (), USER, False, True, False),
    ("history-off-insecure", {}, (), USER, True, True, False),
]  # fmt: skip


@pytest.mark.parametrize(("grant", "force", "allow"), POSITION_GRANTS)
@pytest.mark.parametrize(
    ("options", "flags", "user", "asked", "insecure", "granted"),
    [c[1:] for c in POSITION_CASES],
    ids=[c[0] for c in POSITION_CASES],
)
def test_grant_positioned_and_recoverable(
    grant: Any,
    force: str,
    allow: str,
    options: dict[str, Any],
    flags: tuple[str, ...],
    user: str,
    asked: bool,
    insecure: bool,
    granted: bool,
) -> None:
    names = {"force": force, "allow": allow}
    switches: dict[str, Any] = {names[flag]: True for flag in flags}
    opts = ChannelOptions(**options, **switches)
    assert grant(opts, user, asked, insecure) is granted


@pytest.mark.parametrize(
    ("grant", "other_force", "other_allow"),
    [
        (grant_positioned, "force_recovery", "allow_recovery"),
        (grant_recoverable, "force_positioning", "allow_positioning"),
    ],
    ids=["positioned", "recoverable"],
)
def test_position_grants_do_not_use_each_others_switches(
    grant: Any, other_force: str, other_allow: str
) -> None:
    switches: dict[str, Any] = {other_force: True, other_allow: True}
    opts = ChannelOptions(**switches)
    assert grant(opts, USER, True, False) is False


# --- client-requested extras: join_leave -------------------------------------------------------

PRESENCE_ON = {"join_leave": True, "presence": True}

JOIN_LEAVE_CASES: list[tuple[str, dict[str, Any], str, bool, bool, bool]] = [
    # namespace join_leave off: never delivered
    ("join-leave-off", {"presence": True, "allow_presence_for_client": True,
     "force_push_join_leave": True}, USER, True, True, False),
    # force_push_join_leave: delivered without asking
    ("force-push", {"join_leave": True, "force_push_join_leave": True}, USER, False, False, True),
    ("force-push-anonymous", {"join_leave": True, "force_push_join_leave": True}, ANON, False,
     False, True),
    # asked + presence permission
    ("asked-presence-client", {**PRESENCE_ON, "allow_presence_for_client": True}, USER, True,
     False, True),
    ("not-asked-presence-client", {**PRESENCE_ON, "allow_presence_for_client": True}, USER, False,
     False, False),
    ("asked-presence-subscriber", {**PRESENCE_ON, "allow_presence_for_subscriber": True}, USER,
     True, False, True),
    ("asked-presence-anonymous-denied", {**PRESENCE_ON, "allow_presence_for_client": True}, ANON,
     True, False, False),
    ("asked-presence-anonymous-allowed", {**PRESENCE_ON, "allow_presence_for_client": True,
     "allow_presence_for_anonymous": True}, ANON, True, False, True),
    ("asked-presence-off", {"join_leave": True, "allow_presence_for_client": True}, USER, True,
     False, False),
    ("asked-no-presence-permission", PRESENCE_ON, USER, True, False, False),
    ("asked-no-presence-permission-insecure", PRESENCE_ON, USER, True, True, True),
    ("not-asked-insecure", PRESENCE_ON, USER, False, True, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "user", "asked", "insecure", "granted"),
    [c[1:] for c in JOIN_LEAVE_CASES],
    ids=[c[0] for c in JOIN_LEAVE_CASES],
)
def test_grant_join_leave(
    options: dict[str, Any], user: str, asked: bool, insecure: bool, granted: bool
) -> None:
    assert grant_join_leave(ChannelOptions(**options), user, asked, insecure) is granted
