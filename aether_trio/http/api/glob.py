"""Channel patterns of the API's `channels` method: the gobwas/glob syntax Centrifugo uses.

`*` any run of characters, `?` one character, `[abc]` / `[a-z]` / `[!abc]` one of (or none of)
a set, `{news,chat:*}` one of several alternatives (which may nest), `\\` takes the next
character literally. Channel names have no separators, so `*` also crosses `:` and `#`.

Matching takes time linear in the name for each alternative, whatever the pattern: a pattern
is cut at its `*`s into pieces that each match a fixed number of characters; the first piece must
match at the start, the last at the end, and each one between is found at its leftmost place after
the previous one (leftmost is always right: a later place could only leave less room). A regular
expression with `.*` for every `*` backtracks instead: `*a*a*a*a*b` against a long name of `a`s
held the event loop for seconds. Alternatives are expanded into plain patterns, at most
`MAX_ALTERNATIVES` of them, and a pattern is at most `MAX_PATTERN` characters.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_ALTERNATIVES", "MAX_PATTERN", "compile_glob"]

MAX_PATTERN: Final = 256
MAX_ALTERNATIVES: Final = 64

# A piece of a pattern between `*`s: regular-expression text for exactly one character per item.
Piece = list[str]


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate for whole names matching `pattern`; ValueError if it is malformed or too
    large."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"longer than {MAX_PATTERN} characters")
    alternatives = [_Plain(items) for items in _expand(_parse(pattern))]
    if len(alternatives) == 1:
        return alternatives[0].matches
    return lambda name: any(plain.matches(name) for plain in alternatives)


# --- parsing: a sequence of items, an item being one character's regex, "*", or alternatives ---

Item = str | list["Sequence"]  # a list: the alternatives of a `{...}` group
Sequence = list[Item]


def _parse(pattern: str) -> Sequence:
    stack: list[tuple[Sequence, list[Sequence]]] = []  # enclosing sequence, alternatives so far
    current: Sequence = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 1
            if i == len(pattern):
                raise ValueError("pattern ends with a lone backslash")
            current.append(re.escape(pattern[i]))
        elif char == "*":
            if not current or current[-1] != "*":  # `**` is `*`
                current.append("*")
        elif char == "?":
            current.append(".")
        elif char == "[":
            end = pattern.find("]", i + 2)  # a `]` right after `[` (or `[!`) is a member
            if end == -1:
                raise ValueError("unclosed '['")
            current.append(_char_class(pattern[i + 1 : end]))
            i = end
        elif char == "{":
            stack.append((current, []))
            current = []
        elif char == "," and stack:
            stack[-1][1].append(current)
            current = []
        elif char == "}" and stack:
            outer, alternatives = stack.pop()
            alternatives.append(current)
            outer.append(alternatives)
            current = outer
        else:
            current.append(re.escape(char))
        i += 1
    if stack:
        raise ValueError("unclosed '{'")
    return current


def _char_class(body: str) -> str:
    negate = body.startswith("!")
    members = body[1:] if negate else body
    if not members:
        raise ValueError("empty '[]'")
    # Ranges keep their `-`; everything else is literal inside the class.
    escaped = "".join(c if c == "-" else re.escape(c) for c in members)
    text = f"[{'^' if negate else ''}{escaped}]"
    try:
        re.compile(text)
    except re.error as exc:  # e.g. a range like [z-a]
        raise ValueError(str(exc)) from None
    return text


def _expand(sequence: Sequence) -> list[list[str]]:
    """Every plain pattern (no alternatives) the sequence stands for."""
    choices: list[list[list[str]]] = []
    for item in sequence:
        if isinstance(item, str):
            choices.append([[item]])
        else:
            choices.append([plain for alternative in item for plain in _expand(alternative)])
        # Checked as it grows: a pattern like `{a,b}{a,b}...` doubles with each group.
        count = 1
        for options in choices:
            count *= len(options)
            if count > MAX_ALTERNATIVES:
                raise ValueError(f"more than {MAX_ALTERNATIVES} alternatives")
    return [
        [part for piece in combination for part in piece]
        for combination in itertools.product(*choices)
    ]


# --- matching ---


class _Plain:
    """One pattern without alternatives: fixed-width pieces between `*`s."""

    __slots__ = ("_first", "_last", "_middle", "_star")

    def __init__(self, items: list[str]) -> None:
        pieces: list[Piece] = [[]]
        for item in items:
            if item == "*":
                pieces.append([])
            else:
                pieces[-1].append(item)
        self._star = len(pieces) > 1
        compiled = [(re.compile("".join(piece), re.DOTALL), len(piece)) for piece in pieces]
        self._first = compiled[0]
        self._last = compiled[-1]
        self._middle = compiled[1:-1]

    def matches(self, name: str) -> bool:
        first, first_width = self._first
        if not self._star:
            return len(name) == first_width and first.fullmatch(name) is not None
        last, last_width = self._last
        end = len(name) - last_width
        if end < first_width or first.match(name) is None:
            return False
        position = first_width
        for piece, _width in self._middle:
            found = piece.search(name, position, end)
            if found is None:
                return False
            position = found.end()
        return last.fullmatch(name, end) is not None
