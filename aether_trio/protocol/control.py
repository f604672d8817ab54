"""The node-to-node control messages (sans-IO): what one Aether node tells the others through the
engine's control plane (engines/control.py moves the bytes, cluster.py acts on them).

A message is one JSON object `{"k": kind, ...}`; the kinds, after centrifuge's `controlpb`:

    node   {"k": "node", "i": {name, version, num_clients, ...}}     heartbeat: I am alive
    bye    {"k": "bye"}                                              I am shutting down
    cmd    {"k": "cmd", "m": method, "b": {...}}                     apply `method` locally
    sreq   {"k": "sreq", "id": survey id, "op": op, "b": {...}}      answer me (survey request)
    srep   {"k": "srep", "id": survey id, "r": {...}} / "e": error   a survey reply

Every node may be running another version: unknown kinds and malformed messages are refused
with `ControlError` (the receiver logs and ignores them), never trusted.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

__all__ = ["KINDS", "ControlError", "ControlMessage", "decode_control", "encode_control"]

KINDS = frozenset({"node", "bye", "cmd", "sreq", "srep"})
# What each kind must carry, and the type of it.
_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "node": (("i", dict),),
    "bye": (),
    "cmd": (("m", str), ("b", dict)),
    "sreq": (("id", str), ("op", str), ("b", dict)),
    "srep": (("id", str),),
}


class ControlError(ValueError):
    pass


@attrs.frozen
class ControlMessage:
    kind: str
    fields: dict[str, Any] = attrs.field(factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


def encode_control(kind: str, **fields: Any) -> bytes:
    assert kind in KINDS, kind
    return orjson.dumps({"k": kind, **fields})


def decode_control(raw: bytes) -> ControlMessage:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ControlError("not JSON") from None
    if not isinstance(value, dict):
        raise ControlError("not a JSON object")
    kind = value.pop("k", None)
    if kind not in KINDS:
        raise ControlError(f"unknown kind {str(kind)[:32]!r}")
    for name, expected in _FIELDS[kind]:
        if not isinstance(value.get(name), expected):
            raise ControlError(f"{kind}: {name} must be a {expected.__name__}")
    if kind == "srep" and not (isinstance(value.get("r"), dict) or isinstance(value.get("e"), str)):
        raise ControlError("srep: needs a result object r or an error string e")
    return ControlMessage(kind, value)
