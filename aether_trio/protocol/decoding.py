"""Strict decoding of JSON input into frozen attrs classes, and cattrs' errors as key paths.

Every reader of structured input goes through here: the server API's request bodies
(`http.api.requests`), the operator commands' parameters (`admin.params`) and, for its error
paths only, the configuration (`config.loader`, whose TOML converter has rules of its own).

    strict_converter(...)  a cattrs converter (orjson preconf) checking exact JSON types: a string
                           is not a number, `true` is not 1, 1.0 is not an integer; a JSON `null`
                           counts as absent (the field keeps its default)
    loads_object(body)     the one place a request body is parsed: a JSON object or DecodeError
    Decoder(conv, cls)     a parsed object into a `cls`; any cattrs error becomes DecodeError
    error_paths(exc)       cattrs' nested validation errors as (key path, message) pairs, the path
                           naming list indices and nested objects: `commands[2].publish.tags.x`

A leaf module: it imports nothing from aether_trio, so every layer may use it.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import Annotated, Any, Final, Generic, TypeVar

import attrs
import cattrs
import orjson
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn
from cattrs.preconf.orjson import make_converter

__all__ = [
    "JSON_VALUE_MAX_DEPTH",
    "DecodeError",
    "Decoder",
    "IntRange",
    "JsonValue",
    "MaxDepth",
    "error_paths",
    "json_kind",
    "loads_object",
    "nesting_exceeds",
    "object_hook",
    "strict_converter",
]

T = TypeVar("T")


class DecodeError(ValueError):
    """The input does not have the expected shape: `field` is the key path ("" for the input as
    a whole) and `message` says what is wrong there."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@attrs.frozen
class MaxDepth:
    """`Annotated[Any, MaxDepth(n)]`: any JSON value whose objects and arrays nest at most `n`
    deep (the value itself counting 1 when it is one)."""

    levels: int


# The deepest JSON value a request may carry (publication data, info): orjson refuses to encode
# more than 254 levels, and whatever walks a payload later (sanitizing, re-encoding) stays far
# from any limit. Deeper input is the caller's mistake: a 400 naming the field.
JSON_VALUE_MAX_DEPTH: Final = 128
JsonValue = Annotated[Any, MaxDepth(JSON_VALUE_MAX_DEPTH)]


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays in `value` nest deeper than `limit` (`value` itself counting 1
    if it is one). Iterative: no recursion, however deep the input."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        for child in container.values() if type(container) is dict else container:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


@attrs.frozen
class IntRange:
    """`Annotated[int, IntRange(lo, hi)]`: an integer field with bounds, checked while decoding."""

    lo: int
    hi: int


_KINDS: Final[dict[type, str]] = {
    dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
    float: "a number", type(None): "null",
}  # fmt: skip


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, for messages ("an integer", "an array", ...)."""
    return _KINDS.get(type(value), type(value).__name__)


# --- the converter ---


def strict_converter(*, forbid_extra_keys: bool, from_text: bool = False) -> cattrs.Converter:
    """A converter for JSON input: exact types, `null` as absent, unknown keys ignored or (with
    `forbid_extra_keys`) refused. With `from_text` (a query string) numbers and booleans may be
    spelled as text too: "3", "2.5", "true", "false"."""
    conv = make_converter(forbid_extra_keys=forbid_extra_keys)

    def structure_str(value: Any, _t: Any) -> str:
        if type(value) is not str:
            raise TypeError(f"expected a string, got {json_kind(value)}")
        return value

    def structure_bool(value: Any, _t: Any) -> bool:
        if from_text and type(value) is str and value in ("true", "false"):
            return value == "true"
        if type(value) is not bool:
            raise TypeError(f"expected true or false, got {json_kind(value)}")
        return value

    def structure_int(value: Any, _t: Any) -> int:
        if from_text and type(value) is str:
            if not (value.isascii() and value.removeprefix("-").isdigit()):
                raise TypeError(f"expected an integer, got {value!r}")
            return int(value)
        if type(value) is not int:
            raise TypeError(f"expected an integer, got {json_kind(value)}")
        return value

    def structure_float(value: Any, _t: Any) -> float:
        if from_text and type(value) is str:
            try:
                value = float(value)
            except ValueError:
                raise TypeError(f"expected a number, got {value!r}") from None
        if type(value) is not int and type(value) is not float:
            raise TypeError(f"expected a number, got {json_kind(value)}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)

    def is_int_range(t: Any) -> bool:
        return typing.get_origin(t) is Annotated and isinstance(typing.get_args(t)[1], IntRange)

    def int_range_hook(t: Any) -> Callable[[Any, Any], int]:
        bounds: IntRange = typing.get_args(t)[1]
        return _ranged(structure_int, bounds)

    def is_max_depth(t: Any) -> bool:
        return typing.get_origin(t) is Annotated and isinstance(typing.get_args(t)[1], MaxDepth)

    def max_depth_hook(t: Any) -> Callable[[Any, Any], Any]:
        levels = typing.get_args(t)[1].levels

        def structure_json(value: Any, _t: Any) -> Any:
            if nesting_exceeds(value, levels):
                raise ValueError(f"nested deeper than {levels} levels")
            return value

        return structure_json

    def is_homogeneous_tuple(t: Any) -> bool:
        args = typing.get_args(t)
        return typing.get_origin(t) is tuple and len(args) == 2 and args[1] is ...

    def tuple_hook(t: Any) -> Callable[[Any, Any], tuple[Any, ...]]:
        item_type = typing.get_args(t)[0]
        item = conv.get_structure_hook(item_type)

        def structure_tuple(value: Any, _t: Any) -> tuple[Any, ...]:
            # A list only: cattrs alone would split a string into its characters.
            if type(value) is not list:
                raise TypeError(f"expected an array, got {json_kind(value)}")
            try:
                return tuple([item(element, item_type) for element in value])
            except Exception:  # again, one element at a time, to name the one(s) in error
                pass
            items, errors = [], []
            for index, element in enumerate(value):
                try:
                    items.append(item(element, item_type))
                except Exception as exc:
                    exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                    errors.append(exc)
            if errors:
                raise IterableValidationError("invalid array", errors, t)
            return tuple(items)

        return structure_tuple

    def is_str_dict(t: Any) -> bool:
        args = typing.get_args(t)
        return typing.get_origin(t) is dict and len(args) == 2 and args[0] is str

    def dict_hook(t: Any) -> Callable[[Any, Any], dict[str, Any]]:
        value_type = typing.get_args(t)[1]
        item = conv.get_structure_hook(value_type)

        def structure_dict(value: Any, _t: Any) -> dict[str, Any]:
            if type(value) is not dict:
                raise TypeError(f"expected an object, got {json_kind(value)}")
            if value_type is str:  # `tags`, the common case: no hook calls
                for element in value.values():
                    if type(element) is not str:
                        break
                else:
                    return dict(value)
            else:
                try:
                    return {key: item(element, value_type) for key, element in value.items()}
                except Exception:  # again, one member at a time, to name the one(s) in error
                    pass
            result, errors = {}, []
            for key, element in value.items():
                try:
                    result[key] = item(element, value_type)
                except Exception as exc:
                    exc.add_note(IterableValidationNote(f"@ key {key!r}", key, value_type))
                    errors.append(exc)
            if errors:
                raise IterableValidationError("invalid object", errors, t)
            return result

        return structure_dict

    def attrs_hook(cls: Any) -> Callable[[Any, Any], Any]:
        generated = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=forbid_extra_keys)
        return object_hook(generated)

    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(bool, structure_bool)
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(float, structure_float)
    conv.register_structure_hook_factory(is_int_range, int_range_hook)
    conv.register_structure_hook_factory(is_max_depth, max_depth_hook)
    conv.register_structure_hook_factory(is_homogeneous_tuple, tuple_hook)
    conv.register_structure_hook_factory(is_str_dict, dict_hook)
    conv.register_structure_hook_factory(attrs.has, attrs_hook)
    return conv


def _ranged(
    structure_int: Callable[[Any, Any], int], bounds: IntRange
) -> Callable[[Any, Any], int]:
    """An integer hook that also checks `bounds`."""

    def structure(value: Any, t: Any) -> int:
        number = structure_int(value, t)
        if not bounds.lo <= number <= bounds.hi:
            raise ValueError(f"expected {bounds.lo}..{bounds.hi}")
        return number

    return structure


def object_hook(generated: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
    """Wrap a structure function of an attrs class: the value must be a JSON object, and its
    null members count as absent (the generated function then uses the field's default)."""

    def structure(value: Any, t: Any) -> T:
        if type(value) is not dict:
            raise TypeError(f"expected an object, got {json_kind(value)}")
        if None in value.values():
            value = {key: item for key, item in value.items() if item is not None}
        return generated(value, t)

    return structure


# --- decoding ---


def loads_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object; an empty (or all-whitespace) body is `{}`."""
    if not body or body.isspace():
        return {}
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DecodeError("", "malformed JSON") from None
    if type(raw) is not dict:
        raise DecodeError("", f"the body must be a JSON object, got {json_kind(raw)}")
    return raw


class Decoder(Generic[T]):
    """Parsed JSON into a `cls` through `converter`, whose structure function is looked up once
    (create decoders after the converter's hooks are all registered). Any error becomes a
    DecodeError naming the first field in error; `unknown` and `missing` word the two errors
    cattrs reports itself."""

    def __init__(
        self,
        converter: cattrs.Converter,
        cls: type[T],
        *,
        unknown: str = "unknown field",
        missing: str = "is required",
    ) -> None:
        self.cls = cls
        self._structure: Callable[[Any, type[T]], T] = converter.get_structure_hook(cls)
        self._wording = {"unknown": unknown, "missing": missing}

    def __call__(self, raw: Any) -> T:
        try:
            return self._structure(raw, self.cls)
        except (cattrs.BaseValidationError, ForbiddenExtraKeysError, TypeError, ValueError) as exc:
            field, message = error_paths(exc, **self._wording)[0]
            raise DecodeError(field, message) from None

    def json(self, body: bytes) -> T:
        """A request body: `loads_object`, then this decoder."""
        return self(loads_object(body))


# --- errors as key paths ---


def error_paths(
    exc: BaseException,
    path: str = "",
    *,
    unknown: str = "unknown key",
    missing: str = "missing required key",
) -> list[tuple[str, str]]:
    """Turn cattrs' nested exception groups into (`key.path[index]`, what went wrong) pairs, in
    the order cattrs met them. `unknown` and `missing` word the two errors cattrs reports itself
    (a TOML file has keys, a JSON request has fields)."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [(_child(path, key), unknown) for key in sorted(exc.extra_fields)]
    if isinstance(exc, ClassValidationError | IterableValidationError):
        found: list[tuple[str, str]] = []
        for sub in exc.exceptions:
            sub_path = _note_path(sub, path)
            found.extend(error_paths(sub, sub_path, unknown=unknown, missing=missing))
        return found
    if isinstance(exc, BaseExceptionGroup):
        return [
            pair
            for sub in exc.exceptions
            for pair in error_paths(sub, path, unknown=unknown, missing=missing)
        ]
    if isinstance(exc, KeyError):
        return [(path, missing)]
    message = str(exc)
    if isinstance(exc, ValueError) and ":" in message:
        # attrs validators name their attribute first ("history_size: expected ..."): the
        # construction failed as a whole, so the path is the class's; add the attribute.
        attr, _, rest = message.partition(":")
        if all(part.isidentifier() for part in attr.split(".")) and not path.endswith(attr):
            return [(_child(path, attr), rest.strip())]
    return [(path, message)]


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _note_path(exc: BaseException, path: str) -> str:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return _child(path, note.name)
        if isinstance(note, IterableValidationNote):
            index = note.index
            return f"{path}[{index}]" if isinstance(index, int) else _child(path, index)
    return path
