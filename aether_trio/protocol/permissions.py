"""Permission decisions of reference 11.3, as pure functions (first matching rule wins).

Each returns normally when allowed and raises `ReplyError` otherwise. Token-based subscribe
decisions (rule 2) are made by the caller, which has the verified claims.
"""

from __future__ import annotations

from .channels import ResolvedChannel
from .codes import ErrorCode
from .errors import ReplyError
from .options import ChannelOptions

__all__ = [
    "check_history",
    "check_presence",
    "check_publish",
    "check_subscribe_without_token",
    "grant_join_leave",
    "grant_positioned",
    "grant_recoverable",
]

_DENIED = ErrorCode.PERMISSION_DENIED


def check_subscribe_without_token(ch: ResolvedChannel, user: str, insecure: bool) -> None:
    if ch.private:
        raise ReplyError(_DENIED, "private channel requires a subscription token")
    if ch.user_limited and user and user in ch.allowed_users:
        return
    opts = ch.options
    if (
        opts.allow_subscribe_for_client
        and (user or opts.allow_subscribe_for_anonymous)
        and not ch.user_limited
    ):
        return
    if insecure:
        return
    raise ReplyError(_DENIED, "subscribe not allowed")


def check_publish(ch: ResolvedChannel, user: str, subscribed: bool, insecure: bool) -> None:
    opts = ch.options
    if opts.allow_publish_for_client and (user or opts.allow_publish_for_anonymous):
        return
    if (
        opts.allow_publish_for_subscriber
        and subscribed
        and (user or opts.allow_publish_for_anonymous)
    ):
        return
    if insecure:
        return
    raise ReplyError(_DENIED, "publish not allowed")


def check_history(ch: ResolvedChannel, user: str, subscribed: bool, insecure: bool) -> None:
    opts = ch.options
    if not opts.history_enabled:
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "history is off for this channel")
    if _read_allowed(
        user,
        subscribed,
        opts.allow_history_for_client,
        opts.allow_history_for_subscriber,
        opts.allow_history_for_anonymous,
    ):
        return
    if insecure:
        return
    raise ReplyError(_DENIED, "history not allowed")


def check_presence(ch: ResolvedChannel, user: str, subscribed: bool, insecure: bool) -> None:
    opts = ch.options
    if not opts.presence:
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "presence is off for this channel")
    if _read_allowed(
        user,
        subscribed,
        opts.allow_presence_for_client,
        opts.allow_presence_for_subscriber,
        opts.allow_presence_for_anonymous,
    ):
        return
    if insecure:
        return
    raise ReplyError(_DENIED, "presence not allowed")


def _read_allowed(
    user: str, subscribed: bool, for_client: bool, for_subscriber: bool, for_anonymous: bool
) -> bool:
    if not user and not for_anonymous:
        return False
    return for_client or (for_subscriber and subscribed)


def _has_history_permission(opts: ChannelOptions, user: str, insecure: bool) -> bool:
    # Subscribing is in progress, so "subscriber" permissions count as held.
    return opts.history_enabled and (
        insecure
        or _read_allowed(
            user,
            True,
            opts.allow_history_for_client,
            opts.allow_history_for_subscriber,
            opts.allow_history_for_anonymous,
        )
    )


def grant_positioned(opts: ChannelOptions, user: str, asked: bool, insecure: bool) -> bool:
    if opts.force_positioning:
        return True
    return asked and (opts.allow_positioning or _has_history_permission(opts, user, insecure))


def grant_recoverable(opts: ChannelOptions, user: str, asked: bool, insecure: bool) -> bool:
    if opts.force_recovery:
        return True
    return asked and (opts.allow_recovery or _has_history_permission(opts, user, insecure))


def grant_join_leave(opts: ChannelOptions, user: str, asked: bool, insecure: bool) -> bool:
    """Whether join/leave pushes are delivered to this subscriber."""
    if not opts.join_leave:
        return False
    if opts.force_push_join_leave:
        return True
    return asked and (
        insecure
        or (
            opts.presence
            and _read_allowed(
                user,
                True,
                opts.allow_presence_for_client,
                opts.allow_presence_for_subscriber,
                opts.allow_presence_for_anonymous,
            )
        )
    )
