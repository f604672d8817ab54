"""Channel patterns of the API's `channels` method: the gobwas/glob syntax Centrifugo uses.

`*` any run of characters, `?` one character, `[abc]` / `[a-z]` / `[!abc]` one of (or none of)
a set, `{news,chat:*}` one of several alternatives (which may nest), `\\` takes the next
character literally. Channel names have no separators, so `*` also crosses `:` and `#`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["compile_glob"]


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate for whole names matching `pattern`; ValueError if it is malformed."""
    out: list[str] = []
    depth = 0  # open `{` groups
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 1
            if i == len(pattern):
                raise ValueError("pattern ends with a lone backslash")
            out.append(re.escape(pattern[i]))
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = pattern.find("]", i + 2)  # a `]` right after `[` (or `[!`) is a member
            if end == -1:
                raise ValueError("unclosed '['")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            members = body[1:] if negate else body
            if not members:
                raise ValueError("empty '[]'")
            # Ranges keep their `-`; everything else is literal inside the class.
            escaped = "".join(c if c == "-" else re.escape(c) for c in members)
            out.append(f"[{'^' if negate else ''}{escaped}]")
            i = end
        elif char == "{":
            depth += 1
            out.append("(?:")
        elif char == "," and depth:
            out.append("|")
        elif char == "}" and depth:
            depth -= 1
            out.append(")")
        else:
            out.append(re.escape(char))
        i += 1
    if depth:
        raise ValueError("unclosed '{'")
    try:
        regex = re.compile("".join(out), re.DOTALL)
    except re.error as exc:  # e.g. a range like [z-a]
        raise ValueError(str(exc)) from None
    return lambda name: regex.fullmatch(name) is not None
