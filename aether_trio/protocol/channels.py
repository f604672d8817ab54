"""Channel-name rules (reference 11.1): namespaces, the private `$` prefix, user-limited `#` names.

`ChannelRules` is built from the config once (and again on reload) and answers, for a name, which
options apply; it raises `ReplyError` with 102 (unknown namespace) or 107 (bad name) otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from .codes import ErrorCode
from .errors import ReplyError
from .options import ChannelOptions, Namespace

__all__ = ["ChannelRules", "ResolvedChannel"]

PRIVATE_PREFIX = "$"
NAMESPACE_BOUNDARY = ":"
USER_BOUNDARY = "#"
USER_SEPARATOR = ","


@attrs.frozen
class ResolvedChannel:
    name: str
    namespace: str  # "" for channels without a namespace
    options: ChannelOptions
    private: bool
    # Users named by a user-limited channel (`dialog#42,43`); empty if it is not user-limited.
    allowed_users: frozenset[str]
    user_limited: bool


class ChannelRules:
    def __init__(
        self, without_namespace: ChannelOptions, namespaces: Iterable[Namespace], max_length: int
    ) -> None:
        self.without_namespace = without_namespace
        self.namespaces = {ns.name: ns for ns in namespaces}
        self.max_length = max_length
        self._regex = {
            ns.name: re.compile(ns.channel_regex)
            for ns in self.namespaces.values()
            if ns.channel_regex
        }
        if without_namespace.channel_regex:
            self._regex[""] = re.compile(without_namespace.channel_regex)

    def resolve(self, channel: str) -> ResolvedChannel:
        private = channel.startswith(PRIVATE_PREFIX)
        bare = channel[len(PRIVATE_PREFIX) :] if private else channel
        namespace, sep, rest = bare.partition(NAMESPACE_BOUNDARY)
        options: ChannelOptions
        if sep:
            found = self.namespaces.get(namespace)
            if found is None:
                raise ReplyError(ErrorCode.UNKNOWN_CHANNEL, f"unknown namespace {namespace!r}")
            options = found
        else:
            namespace, rest, options = "", bare, self.without_namespace
        if len(channel) > self.max_length:
            raise ReplyError(ErrorCode.BAD_REQUEST, "channel name too long")
        regex = self._regex.get(namespace)
        if regex is not None:
            # Unanchored, like Go's MatchString: to cover the whole name, write ^...$.
            if not regex.search(rest):
                raise ReplyError(ErrorCode.BAD_REQUEST, "channel name does not match channel_regex")
        elif not channel.isascii():
            raise ReplyError(ErrorCode.BAD_REQUEST, "non-ASCII channel name")
        allowed: frozenset[str] = frozenset()
        user_limited = options.allow_user_limited_channels and USER_BOUNDARY in rest
        if user_limited:
            users = rest.rpartition(USER_BOUNDARY)[2]
            allowed = frozenset(u for u in users.split(USER_SEPARATOR) if u)
        return ResolvedChannel(channel, namespace, options, private, allowed, user_limited)

    def personal_channel(self, namespace: str, user: str) -> str:
        prefix = f"{namespace}{NAMESPACE_BOUNDARY}" if namespace else ""
        return f"{prefix}{USER_BOUNDARY}{user}"
