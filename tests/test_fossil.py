"""Aether's fossil deltas decode with the SDK's own decoder (centrifuge-python's `fossil.py`),
on random payloads and on the shapes publications have (JSON documents that differ in a field).
"""

from __future__ import annotations

import json

from centrifuge.fossil import apply_delta
from centrifuge.fossil import checksum as sdk_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_trio.protocol.fossil import checksum, create

payloads = st.binary(max_size=600)


@given(payloads, payloads)
@settings(max_examples=400, deadline=None)
def test_random_deltas_decode_with_the_sdk(source: bytes, target: bytes) -> None:
    assert apply_delta(source, create(source, target)) == target


@given(payloads, st.binary(max_size=40), st.binary(max_size=40), st.integers(0, 600))
@settings(max_examples=400, deadline=None)
def test_edits_in_the_middle_decode_and_shrink(
    source: bytes, removed: bytes, inserted: bytes, at: int
) -> None:
    at = min(at, len(source))
    target = source[:at] + inserted + source[at + len(removed) :]
    delta = create(source, target)
    assert apply_delta(source, delta) == target
    # Unchanged parts travel as copies: the delta grows with the edit, not the payload.
    assert len(delta) <= len(inserted) + 40


@given(payloads)
def test_the_checksum_is_fossils(data: bytes) -> None:
    assert checksum(data) == sdk_checksum(data)


def test_a_json_publication_that_changes_one_field() -> None:
    source = json.dumps({"ticker": "AAPL", "price": 101.5, "volume": 1_000_000, "n": "x" * 200})
    target = source.replace("101.5", "102.25")
    delta = create(source.encode(), target.encode())
    assert apply_delta(source.encode(), delta) == target.encode()
    assert len(delta) < 40 < len(target)


def test_identical_and_empty_payloads() -> None:
    for source, target in [(b"", b""), (b"abc", b""), (b"", b"abc"), (b"x" * 100, b"x" * 100)]:
        assert apply_delta(source, create(source, target)) == target
