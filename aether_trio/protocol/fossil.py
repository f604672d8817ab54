"""Fossil deltas (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki), the `delta: "fossil"`
compression of publications: `create(source, target)` gives a delta that the SDKs' decoders
(centrifuge-python's `fossil.apply_delta`, centrifuge-js's) turn `source` back into `target`.

No well-kept implementation exists on PyPI (the two wrappers of fossil's C code date from 2017
and 2018), so this is a small one: it copies the longest common prefix and suffix of the two
payloads from the source and inserts what lies between them. Publications of one channel
usually differ in a few fields, which this captures at C speed (bytes comparisons) instead of
fossil's rolling-hash search in Python. Every delta is valid fossil: tests/test_fossil.py
checks it against the SDK's decoder on random inputs. The caller sends the full payload instead
when the delta is not shorter.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["checksum", "create"]

_DIGITS: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
# A copy of fewer bytes than its command takes ("NN@NNN,") is better inserted.
_MIN_COPY: Final = 8


def _int(value: int) -> bytes:
    """`value` (>= 0) in fossil's base-64 digits."""
    if value == 0:
        return b"0"
    digits = bytearray()
    while value:
        digits.append(_DIGITS[value & 0x3F])
        value >>= 6
    digits.reverse()
    return bytes(digits)


def checksum(data: bytes) -> int:
    """Fossil's 32-bit checksum: the sum of the big-endian 32-bit words, the last one padded."""
    words = len(data) // 4
    total = sum(struct.unpack_from(f">{words}I", data)) if words else 0
    for shift, byte in zip((24, 16, 8), data[words * 4 :], strict=False):
        total += byte << shift
    return total & 0xFFFFFFFF


def _common_prefix(a: memoryview, b: memoryview, limit: int) -> int:
    """Length of the longest common prefix of `a` and `b`, at most `limit` (a binary search of
    slice comparisons: O(n log n) in C)."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: memoryview, b: memoryview, limit: int) -> int:
    low, high = 0, limit
    len_a, len_b = len(a), len(b)
    while low < high:
        middle = (low + high + 1) // 2
        if a[len_a - middle :] == b[len_b - middle :]:
            low = middle
        else:
            high = middle - 1
    return low


def create(source: bytes, target: bytes) -> bytes:
    """A fossil delta turning `source` into `target`."""
    src, tgt = memoryview(source), memoryview(target)
    shortest = min(len(src), len(tgt))
    prefix = _common_prefix(src, tgt, shortest)
    suffix = _common_suffix(src, tgt, shortest - prefix)
    if prefix < _MIN_COPY:
        prefix = 0
    if suffix < _MIN_COPY:
        suffix = 0
    out = [_int(len(tgt)), b"\n"]
    if prefix:
        out += [_int(prefix), b"@0,"]
    middle = tgt[prefix : len(tgt) - suffix]
    if middle:
        out += [_int(len(middle)), b":", middle.tobytes()]
    if suffix:
        out += [_int(suffix), b"@", _int(len(src) - suffix), b","]
    out += [_int(checksum(target)), b";"]
    return b"".join(out)
