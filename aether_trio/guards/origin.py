"""Origin checks for WebSocket handshakes (cross-site WebSocket hijacking protection).

Browsers always send `Origin`; other clients (Node, Python, mobile) usually do not. A request
without `Origin` is allowed; one with an `Origin` is allowed only when it matches a pattern of
`allowed_origins` (shell-style wildcards, compared case-insensitively: `https://*.example.com`,
`http://localhost:*`, or `*` for any). An empty list refuses every browser origin.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

__all__ = ["OriginPolicy"]


class OriginPolicy:
    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._allow_all = "*" in self.patterns
        self._regexes = [
            re.compile(fnmatch.translate(p.lower().rstrip("/"))) for p in self.patterns if p != "*"
        ]

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return True
        if self._allow_all:
            return True
        candidate = origin.strip().lower().rstrip("/")
        if not candidate or candidate == "null":
            return False  # sandboxed iframes and file:// pages send "null"
        return any(regex.match(candidate) for regex in self._regexes)
