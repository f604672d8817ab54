"""Publication tags filters (`tf` on subscribe): which publications a subscription is given.

A filter is a tree of `FilterNode`s (the protocol's message; a JSON object in the JSON protocol):
a leaf compares one tag (`key`, `cmp`, `val` or `vals`), and "and" / "or" / "not" nodes combine
their `nodes`. `compile_filter` checks a tree as upstream's `filter.Validate` does (ValueError
naming the problem: the subscribe is refused with 107) and turns it into a predicate over a
publication's tags with upstream's `filter.Match` semantics: a missing tag equals nothing
(`neq`/`nin` hold for it), numeric comparisons parse both sides as decimals and are false when
either does not parse.

A namespace allows filters with `allow_tags_filter`; as upstream says, a filter saves bandwidth,
it is no access control (the channel's permissions are).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

__all__ = ["MAX_NODES", "TagsPredicate", "compile_filter"]

TagsPredicate = Callable[[Mapping[str, str]], bool]

# The most nodes one filter may have: a filter runs on every publication of the channel.
MAX_NODES: Final = 64

_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_NUMERIC: Final[dict[str, Callable[[Decimal, Decimal], bool]]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_WITH_VAL: Final = frozenset({"eq", "neq", "sw", "ew", "ct", *_NUMERIC})
_WITH_VALS: Final = frozenset({"in", "nin"})
_BARE: Final = frozenset({"ex", "nex"})
_FIELDS: Final = {"op": str, "key": str, "cmp": str, "val": str, "vals": list, "nodes": list}


def _decimal(text: str) -> Decimal | None:
    return Decimal(text) if _NUMBER.fullmatch(text) else None


def compile_filter(raw: Any) -> TagsPredicate:
    """The predicate of filter tree `raw`, or ValueError saying what is wrong with it."""
    count = [0]
    return _compile(raw, count)


def _compile(raw: Any, count: list[int]) -> TagsPredicate:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ValueError(f"more than {MAX_NODES} filter nodes")
    if type(raw) is not dict:
        raise ValueError("a filter node must be an object")
    node: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        value = raw.get(name)
        if value is None:
            value = kind()
        if type(value) is not kind:
            raise ValueError(f"filter {name} must be a {'string' if kind is str else 'list'}")
        node[name] = value
    op, nodes = node["op"], node["nodes"]
    if op == "":
        return _leaf(node["key"], node["cmp"], node["val"], node["vals"])
    if op in ("and", "or"):
        if not nodes:
            raise ValueError(f"{op} node must have at least one child")
        children = [_compile(child, count) for child in nodes]
        if op == "and":
            return lambda tags: all(child(tags) for child in children)
        return lambda tags: any(child(tags) for child in children)
    if op == "not":
        if len(nodes) != 1:
            raise ValueError("not node must have exactly one child")
        child = _compile(nodes[0], count)
        return lambda tags: not child(tags)
    raise ValueError(f"invalid filter op {op[:16]!r}")


def _leaf(key: str, cmp: str, val: str, vals: list[Any]) -> TagsPredicate:
    if not cmp:
        raise ValueError("leaf node must have cmp set")
    if cmp in _WITH_VAL:
        if not val:
            raise ValueError(f"{cmp} comparison requires val")
        if vals:
            raise ValueError(f"{cmp} comparison must not use vals")
    elif cmp in _WITH_VALS:
        if not vals:
            raise ValueError(f"{cmp} comparison requires non-empty vals")
        if val:
            raise ValueError(f"{cmp} comparison must not use val")
        if any(type(v) is not str for v in vals):
            raise ValueError("filter vals must be strings")
    elif cmp in _BARE:
        if val or vals:
            raise ValueError(f"{cmp} comparison must not use val or vals")
    else:
        raise ValueError(f"unknown comparison operator {cmp[:16]!r}")
    if not key and cmp not in _BARE:
        raise ValueError("leaf node requires key")
    return _comparison(key, cmp, val, frozenset(vals))


def _comparison(key: str, cmp: str, val: str, vals: frozenset[str]) -> TagsPredicate:
    if cmp == "eq":
        return lambda tags: tags.get(key) == val
    if cmp == "neq":
        return lambda tags: tags.get(key) != val
    # A missing tag compares as "" for in/nin, as upstream (a Go map's zero value).
    if cmp == "in":
        return lambda tags: tags.get(key, "") in vals
    if cmp == "nin":
        return lambda tags: tags.get(key, "") not in vals
    if cmp == "ex":
        return lambda tags: key in tags
    if cmp == "nex":
        return lambda tags: key not in tags
    if cmp == "sw":
        return lambda tags: key in tags and tags[key].startswith(val)
    if cmp == "ew":
        return lambda tags: key in tags and tags[key].endswith(val)
    if cmp == "ct":
        return lambda tags: key in tags and val in tags[key]
    compare, bound = _NUMERIC[cmp], _decimal(val)

    def numeric(tags: Mapping[str, str]) -> bool:
        text = tags.get(key)
        number = None if text is None else _decimal(text)
        return number is not None and bound is not None and compare(number, bound)

    return numeric
