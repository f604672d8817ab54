"""The shared JSON decoding (`protocol.decoding`) and the server API's request bodies decoded
through it; no server, pure functions (the operator commands' parameters: tests/test_admin.py).

What is pinned: exact JSON types (a string is not a number, `true` is not 1, 1.0 is not an
integer), integer ranges, `null` as absent, unknown keys ignored (API) or refused (admin), and
error paths naming list indices and nested objects the way the config's errors do.
"""

from __future__ import annotations

from typing import Annotated, Any

import attrs
import cattrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_trio.admin import params
from aether_trio.auth.tokens import ChannelOverride
from aether_trio.http.api import requests as rq
from aether_trio.http.api.errors import BadRequestBody
from aether_trio.protocol.decoding import (
    DecodeError,
    Decoder,
    IntRange,
    error_paths,
    loads_object,
    strict_converter,
)
from aether_trio.protocol.messages import StreamPosition

PROPERTIES = settings(max_examples=300, deadline=None, derandomize=True, database=None)

# --- the shared helper, on classes of its own ---


@attrs.frozen
class Leaf:
    n: int = 0
    word: str = ""


def non_empty(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:  # validators name their attribute first: the path gets it
        raise ValueError(f"{attribute.name}: must not be empty")


@attrs.frozen
class Tree:
    name: str = attrs.field(default="x", validator=non_empty)
    small: Annotated[int, IntRange(0, 9)] = 0
    ratio: float = 1.0
    on: bool = False
    leaf: Leaf | None = None
    leaves: tuple[Leaf, ...] = ()
    labels: dict[str, str] = attrs.Factory(dict)
    words: tuple[str, ...] = ()
    anything: Any = None


LENIENT = Decoder(strict_converter(forbid_extra_keys=False), Tree)
STRICT = Decoder(strict_converter(forbid_extra_keys=True), Tree)


def decode(method: str, body: Any) -> Any:
    return rq.decode_request(method, orjson.dumps(body))


def refusal(decoder: Decoder[Any], raw: Any) -> tuple[str, str]:
    with pytest.raises(DecodeError) as info:
        decoder(raw)
    return info.value.field, info.value.message


def test_a_whole_tree_decodes_and_null_counts_as_absent() -> None:
    raw = {
        "name": "t", "small": 9, "ratio": 2, "on": True, "leaf": {"n": 1, "word": None},
        "leaves": [{}, {"n": -5}], "labels": {"a": "b"}, "words": ["x"], "anything": [None, {}],
        "extra": None,
    }  # fmt: skip
    assert LENIENT(raw) == Tree(
        "t", 9, 2.0, True, Leaf(1), (Leaf(), Leaf(-5)), {"a": "b"}, ("x",), [None, {}]
    )
    assert LENIENT({"name": None, "leaf": None, "anything": None}) == Tree()


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"name": 1}, "name", "expected a string, got an integer"),
        ({"small": 10}, "small", "expected 0..9"),
        ({"small": True}, "small", "expected an integer, got a boolean"),
        ({"small": 1.0}, "small", "expected an integer, got a number"),
        ({"ratio": "1"}, "ratio", "expected a number, got a string"),
        ({"ratio": False}, "ratio", "expected a number, got a boolean"),
        ({"on": 1}, "on", "expected true or false, got an integer"),
        ({"leaf": []}, "leaf", "expected an object, got an array"),
        ({"leaf": {"n": "1"}}, "leaf.n", "expected an integer, got a string"),
        ({"leaves": {}}, "leaves", "expected an array, got an object"),
        ({"leaves": [{}, {}, {"word": 3}]}, "leaves[2].word", "expected a string, got an integer"),
        ({"leaves": [{}, None]}, "leaves[1]", "expected an object, got null"),
        ({"labels": {"a": "b", "c.d": 1}}, "labels.c.d", "expected a string, got an integer"),
        ({"labels": ["a"]}, "labels", "expected an object, got an array"),
        ({"words": "abc"}, "words", "expected an array, got a string"),  # not split into chars
        ({"words": ["a", None]}, "words[1]", "expected a string, got null"),
        ({"name": ""}, "name", "must not be empty"),
        ({"leaf": {}, "leaves": [{}, {"n": 1}], "name": ""}, "name", "must not be empty"),
    ],
)
def test_errors_name_the_path(raw: dict[str, Any], field: str, message: str) -> None:
    assert refusal(LENIENT, raw) == (field, message)


def test_unknown_keys_are_ignored_or_refused() -> None:
    assert LENIENT({"zz": 1, "leaf": {"zz": 2}}) == Tree(leaf=Leaf())
    assert refusal(STRICT, {"zz": 1, "b": 2}) == ("b", "unknown field")
    assert refusal(STRICT, {"leaf": {"zz": 2}}) == ("leaf.zz", "unknown field")
    assert refusal(STRICT, []) == ("", "expected an object, got an array")


def test_error_paths_reports_every_error_in_order_with_the_callers_wording() -> None:
    conv = strict_converter(forbid_extra_keys=True)
    with pytest.raises(cattrs.errors.ClassValidationError) as info:
        conv.structure({"small": "x", "leaves": [{"n": 1}, {"q": 1}], "zz": 0}, Tree)
    assert error_paths(info.value) == [
        ("small", "expected an integer, got a string"),
        ("leaves[1].q", "unknown key"),
        ("zz", "unknown key"),
    ]
    assert error_paths(info.value, unknown="unknown field")[-1] == ("zz", "unknown field")


def test_the_body_must_be_a_json_object() -> None:
    assert loads_object(b"") == loads_object(b" \r\n") == {}
    assert loads_object(b'{"a": [1]}') == {"a": [1]}
    for body, message in (
        (b'{"a": ', "malformed JSON"),
        (b"[]", "the body must be a JSON object, got an array"),
        (b"null", "the body must be a JSON object, got null"),
        (b'"x"', "the body must be a JSON object, got a string"),
    ):
        with pytest.raises(DecodeError) as info:
            loads_object(body)
        assert (info.value.field, info.value.message) == ("", message)


def test_text_spellings_only_with_from_text() -> None:
    text = Decoder(strict_converter(forbid_extra_keys=True, from_text=True), Tree)
    assert text({"small": "3", "ratio": "2.5", "on": "true"}) == Tree(small=3, ratio=2.5, on=True)
    assert text({"small": "-0", "ratio": "4", "on": "false"}) == Tree(small=0, ratio=4.0)
    assert refusal(text, {"small": "3.0"}) == ("small", "expected an integer, got '3.0'")
    assert refusal(text, {"small": "٣"}) == ("small", "expected an integer, got '٣'")
    assert refusal(text, {"ratio": "1h"}) == ("ratio", "expected a number, got '1h'")
    assert refusal(text, {"ratio": "inf"}) == ("ratio", "expected a finite number, got inf")
    assert refusal(text, {"on": "yes"}) == ("on", "expected true or false, got a string")
    assert refusal(LENIENT, {"small": "3"})[0] == "small"


# --- the converters refuse booleans and floats for integers (property) ---

NOT_AN_INTEGER = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),  # orjson writes those as null
    st.integers().map(float),  # 3.0 is still not an integer
    st.text(max_size=5),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63), max_size=2),
    st.dictionaries(st.text(max_size=2), st.booleans(), max_size=2),
)

# Every integer field of the server API with its range, and one of the operator commands.
INTEGER_FIELDS = [
    ("history", lambda v: {"limit": v}, "limit", -(2**31), 2**31 - 1),
    ("history", lambda v: {"since": {"offset": v}}, "since.offset", 0, 2**64 - 1),
    ("subscribe", lambda v: {"expire_at": v}, "expire_at", -(2**63), 2**63 - 1),
    ("subscribe", lambda v: {"recover_since": {"offset": v}}, "recover_since.offset", 0, 2**64 - 1),
    ("refresh", lambda v: {"expire_at": v}, "expire_at", -(2**63), 2**63 - 1),
    ("disconnect", lambda v: {"disconnect": {"code": v}}, "disconnect.code", 0, 2**32 - 1),
]


@PROPERTIES
@given(st.sampled_from(INTEGER_FIELDS), NOT_AN_INTEGER)
def test_api_integers_refuse_everything_but_integers(field: Any, value: Any) -> None:
    method, body, path, _lo, _hi = field
    with pytest.raises(BadRequestBody) as info:
        decode(method, body(value))
    assert info.value.field == path
    assert info.value.detail.startswith("expected an integer, got ")


@PROPERTIES
@given(
    st.sampled_from(INTEGER_FIELDS),
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what JSON numbers orjson reads
        st.sampled_from([-(2**63), -(2**31) - 1, -(2**31), -1, 0, 2**31, 2**32, 2**63, 2**64 - 1]),
    ),
)
def test_api_integers_accept_exactly_their_range(field: Any, value: int) -> None:
    method, body, path, lo, hi = field
    if lo <= value <= hi:
        decode(method, body(value))
    else:
        with pytest.raises(BadRequestBody) as info:
            decode(method, body(value))
        assert (info.value.field, info.value.detail) == (path, f"expected {lo}..{hi}")


@PROPERTIES
@given(st.one_of(NOT_AN_INTEGER, st.floats()))
def test_admin_integers_refuse_everything_but_integers(value: Any) -> None:
    with pytest.raises(params.BadParams) as info:
        params.decode(params.TasksParams, {"max_tasks": value})
    assert info.value.field == "max_tasks"
    assert info.value.message.startswith("expected an integer, got ")


# --- the server API's request bodies ---


def test_api_bodies_decode_into_the_request_classes() -> None:
    publish = decode(
        "publish",
        {"channel": "c", "data": {"a": None}, "tags": {"k": "v"}, "idempotency_key": "i",
         "skip_history": True, "b64data": None, "unknown": [1]},
    )  # fmt: skip
    assert publish == rq.Publish("c", rq.PublishOptions({"a": None}, "", True, {"k": "v"}, "i"))
    assert decode("broadcast", {"channels": ["a", "b"], "data": 1}) == rq.Broadcast(
        ("a", "b"), rq.PublishOptions(data=1)
    )
    override = {"presence": {"value": True}, "join_leave": {}, "force_recovery": None}
    subscribe = decode(
        "subscribe",
        {"user": "u", "channel": "c", "recover_since": {"offset": 3, "epoch": "e"},
         "override": override, "expire_at": 0, "info": [1]},
    )  # fmt: skip
    assert subscribe.recover_since == StreamPosition(3, "e")
    assert subscribe.override == ChannelOverride(presence=True, join_leave=False)
    assert subscribe.info == [1]
    assert subscribe.data is None
    assert decode("subscribe", {"override": None}).override is None
    assert decode("disconnect", {"user": "u", "whitelist": ["x"]}) == rq.Disconnect(
        "u", "", "", ("x",), 0, ""
    )
    custom = decode("disconnect", {"disconnect": {"code": 4000, "reason": "bye"}})
    assert (custom.code, custom.reason) == (4000, "bye")
    assert decode("history", {"channel": "c", "limit": -1, "since": {}, "reverse": True}) == (
        rq.History("c", -1, StreamPosition(0, ""), True)
    )
    assert rq.decode_request("info", b"") == rq.Info()
    assert decode("channels", {"pattern": None}) == rq.Channels("")


def test_override_flags_match_the_token_claims() -> None:
    names = [f.name for f in attrs.fields(ChannelOverride)]
    assert [f.name for f in attrs.fields(rq._Override)] == names
    every = decode("subscribe", {"override": {n: {"value": True} for n in names}}).override
    assert every == ChannelOverride(**dict.fromkeys(names, True))


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("publish", {"channel": ["x"]}, "channel"),
        ("publish", {"channel": "c", "tags": {"ok": "1", "x": 2}}, "tags.x"),
        ("publish", {"channel": "c", "tags": ["x"]}, "tags"),
        ("publish", {"channel": "c", "idempotency_key": 1}, "idempotency_key"),
        ("broadcast", {"channels": ["a", None]}, "channels[1]"),
        ("broadcast", {"channels": "a"}, "channels"),
        ("subscribe", {"override": {"presence": True}}, "override.presence"),
        ("subscribe", {"override": {"join_leave": {"value": "yes"}}}, "override.join_leave.value"),
        ("subscribe", {"recover_since": {"offset": 1, "epoch": 5}}, "recover_since.epoch"),
        ("subscribe", {"recover_since": []}, "recover_since"),
        ("subscribe", {"b64info": True}, "b64info"),
        ("disconnect", {"disconnect": {"code": 3000, "reason": 1}}, "disconnect.reason"),
        ("disconnect", {"disconnect": "3000"}, "disconnect"),
        ("disconnect", {"whitelist": [1]}, "whitelist[0]"),
        ("refresh", {"expired": 0}, "expired"),
        ("history", {"limit": "10"}, "limit"),
        ("history", {"since": {"offset": 2.5}}, "since.offset"),
        ("history", {"reverse": "true"}, "reverse"),
        ("channels", {"pattern": 1}, "pattern"),
    ],
)
def test_api_refusals_name_the_path(method: str, body: Any, field: str) -> None:
    with pytest.raises(BadRequestBody) as info:
        decode(method, body)
    assert info.value.field == field


def test_batch_commands_in_upstream_order_with_nested_paths() -> None:
    batch = rq.decode_batch(
        orjson.dumps(
            {"commands": [
                {"publish": {"channel": "a"}, "broadcast": {"channels": ["b"]}},
                {"history": None, "presence": {"channel": "p"}},
                {"rpc": {"method": "x"}},
                {},
                {"info": {}},
            ], "parallel": True}
        )
    )  # fmt: skip
    assert batch.parallel is True
    assert [c.method for c in batch.commands] == ["publish", "presence", "", "", "info"]
    assert batch.commands[1].request == rq.ChannelRequest("p")
    assert rq.decode_batch(b"{}") == rq.Batch((), False)
    for body, field in (
        ({"commands": [{}, {}, {"publish": {"channel": "c", "tags": {"x": 1}}}]},
         "commands[2].publish.tags.x"),
        ({"commands": [{"disconnect": {"whitelist": ["a", 2]}}]},
         "commands[0].disconnect.whitelist[1]"),
        ({"commands": [{"subscribe": {"override": {"presence": {"value": 1}}}}]},
         "commands[0].subscribe.override.presence.value"),
        ({"commands": [{"history": {"since": {"offset": -1}}}]},
         "commands[0].history.since.offset"),
        ({"commands": [{"publish": []}]}, "commands[0].publish"),
        ({"commands": [None]}, "commands[0]"),
        ({"commands": {"publish": {}}}, "commands"),
        ({"parallel": 1}, "parallel"),
    ):  # fmt: skip
        with pytest.raises(BadRequestBody) as info:
            rq.decode_batch(orjson.dumps(body))
        assert info.value.field == field, body
