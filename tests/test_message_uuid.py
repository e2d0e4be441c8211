"""Message UUIDs (sink.intake.rows.message_uuid): RFC 9562 version 7, unique, in time order."""

from __future__ import annotations

import time
import uuid

from hypothesis import given, strategies as st

from sink.intake.rows import message_uuid


@given(ms=st.integers(0, 2**48 - 1))
def test_a_message_uuid_is_version_7_with_its_millisecond_in_front(ms):
    value = uuid.UUID(message_uuid(ms))
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert value.int >> 80 == ms


@given(a=st.integers(0, 2**48 - 2), gap=st.integers(1, 10**6))
def test_a_later_millisecond_sorts_after_as_text_and_as_bytes(a, gap):
    b = min(a + gap, 2**48 - 1)
    first, second = message_uuid(a), message_uuid(b)
    assert first < second and uuid.UUID(first).bytes < uuid.UUID(second).bytes


def test_message_uuids_are_unique_and_follow_the_clock():
    before = time.time_ns() // 1_000_000
    made = [message_uuid() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == len(made)
    assert all(before <= uuid.UUID(u).int >> 80 <= after for u in made)
    # 74 random bits: the last 16 hex digits are not all alike
    assert len({u[-12:] for u in made}) == len(made)
