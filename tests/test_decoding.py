"""The shared JSON decoding (`protocol.decoding`); no server, pure functions.

What is pinned: exact JSON types (a string is not a number, `true` is not 1, 1.0 is not an
integer), integer ranges, `null` as absent, unknown keys ignored or refused, and
error paths naming list indices and nested objects the way the config's errors do.
"""

from __future__ import annotations

from typing import Annotated, Any

import attrs
import pytest

from aether_trio.protocol.decoding import (
    DecodeError,
    Decoder,
    IntRange,
    error_paths,
    loads_object,
    strict_converter,
)

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
    with pytest.raises(Exception) as info:
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
