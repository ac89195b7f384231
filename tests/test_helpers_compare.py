"""helpers.compare_copies on small synthetic inputs (no broker, no proxy)."""

from __future__ import annotations

import pytest

from helpers import CopyReport, StoredRec, compare_copies

pytestmark = pytest.mark.timeout(10, method="signal")

CREATE = 1  # confluent_kafka.TIMESTAMP_CREATE_TIME


def rec(offset, key, value=None, headers=(), ts=1000, ts_type=CREATE) -> StoredRec:
    if value is None:
        value = b"v-" + key if key is not None else b"v"
    return StoredRec(offset=offset, key=key, value=value, headers=list(headers), timestamp=(ts_type, ts))


def topic(*partitions) -> dict:
    """topic([k0, k1], [k2]) -> {0: [recs...], 1: [...]} with offsets 0..n-1."""
    out = {}
    for p, keys in enumerate(partitions):
        keys = [k if isinstance(k, bytes) or k is None else k.encode() for k in keys]
        out[p] = [rec(i, k, ts=1000 + i) for i, k in enumerate(keys)]
    return out


def renumber(recs: list, start: int = 0) -> list:
    return [StoredRec(start + i, r.key, r.value, list(r.headers), r.timestamp) for i, r in enumerate(recs)]


def counts(rep: CopyReport) -> tuple:
    return (rep.missing, rep.duplicates, rep.unexpected, rep.order_violations, rep.mismatches)


def test_identical_copies_are_ok_even_at_other_offsets():
    src = topic(["a", "b", "c"], ["d"], [])
    dst = {0: renumber(src[0], 100), 1: renumber(src[1], 7), 2: []}
    rep = compare_copies(src, dst)
    assert rep.ok and counts(rep) == (0, 0, 0, 0, 0)
    assert (rep.src_count, rep.dst_count) == (4, 4)
    assert sorted(rep.partitions) == [0, 1, 2] and all(d.ok for d in rep.partitions.values())
    rep.assert_ok()
    assert "missing 0" in rep.summary()


def test_missing_record():
    src = topic(["a", "b", "c"])
    dst = {0: renumber([src[0][0], src[0][2]])}
    rep = compare_copies(src, dst)
    assert not rep.ok and counts(rep) == (1, 0, 0, 0, 0)
    assert rep.partitions[0].missing == 1
    assert any("missing key=b'b'" in e and "src offset 1" in e for e in rep.examples), rep.examples
    with pytest.raises(AssertionError, match=r"ctx: src 3 records, dst 2: missing 1"):
        rep.assert_ok("ctx")


def test_whole_partition_missing_from_dst():
    src = topic(["a"], ["b", "c"])
    rep = compare_copies(src, {0: renumber(src[0])})
    assert counts(rep) == (2, 0, 0, 0, 0)
    assert rep.partitions[1].dst_count == 0 and rep.partitions[1].missing == 2


def test_duplicate_in_dst_is_not_an_order_violation():
    src = topic(["a", "b", "c"])
    a, b, c = src[0]
    for dst_seq in ([a, b, b, c], [a, b, c, b], [a, a, b, c]):
        rep = compare_copies(src, {0: renumber(dst_seq)})
        assert counts(rep) == (0, 1, 0, 0, 0), (dst_seq, rep.summary())
        assert "duplicate key=" in rep.examples[0]


def test_order_violations_count_records_out_of_place():
    src = topic(["a", "b", "c", "d", "e"])
    a, b, c, d, e = src[0]
    rep = compare_copies(src, {0: renumber([a, c, b, d, e])})
    assert counts(rep) == (0, 0, 0, 1, 0), rep.summary()
    assert "out of order" in rep.examples[0]
    # one record moved from the end to the front: still one out of place
    rep = compare_copies(src, {0: renumber([e, a, b, c, d])})
    assert rep.order_violations == 1
    # fully reversed: only one record can stay in order
    rep = compare_copies(src, {0: renumber([e, d, c, b, a])})
    assert rep.order_violations == 4


def test_unexpected_and_misplaced_records():
    src = topic(["a", "b"], ["c"])
    a, b = src[0]
    (c,) = src[1]
    stranger = rec(0, b"zzz")
    rep = compare_copies(src, {0: renumber([a]), 1: renumber([c, b, stranger])})
    assert counts(rep) == (1, 0, 2, 0, 0), rep.summary()
    assert rep.misplaced == 1  # b is in partition 1 instead of 0
    assert rep.partitions[0].missing == 1 and rep.partitions[1].unexpected == 2
    assert "another dst partition" in rep.summary()
    assert "p0, p1" in rep.summary()


def test_same_key_and_value_several_times_in_src():
    k = b"same"
    src = {0: [rec(0, k), rec(1, b"x"), rec(2, k)]}
    assert compare_copies(src, {0: renumber(src[0])}).ok
    rep = compare_copies(src, {0: renumber(src[0] + [rec(0, k)])})
    assert counts(rep) == (0, 1, 0, 0, 0)
    rep = compare_copies(src, {0: renumber([src[0][0], src[0][1]])})
    assert counts(rep) == (1, 0, 0, 0, 0)
    # same key, different value: a different record
    rep = compare_copies(src, {0: renumber([src[0][0], src[0][1], rec(2, k, value=b"other")])})
    assert counts(rep) == (1, 0, 1, 0, 0)


def test_headers_compared_in_order_with_duplicates_minus_ignored_names():
    h = [("dup", b"1"), ("dup", b"2"), ("n", None)]
    src = {0: [rec(0, b"a", headers=h)]}

    def dst_with(headers):
        return {0: [rec(5, b"a", headers=headers)]}

    assert compare_copies(src, dst_with(h + [("switchyard-origin", b"site-a")])).ok
    assert compare_copies(src, dst_with([("switchyard-origin", b"x")] + h)).ok
    rep = compare_copies(src, dst_with(h + [("switchyard-origin", b"site-a")]), ignore_headers=())
    assert counts(rep) == (0, 0, 0, 0, 1) and "headers" in rep.examples[0]
    assert compare_copies(src, dst_with([("dup", b"2"), ("dup", b"1"), ("n", None)])).mismatches == 1
    assert compare_copies(src, dst_with([("dup", b"1"), ("n", None)])).mismatches == 1
    assert compare_copies(src, dst_with([("dup", b"1"), ("dup", b"2"), ("n", b"")])).mismatches == 1
    # an ignored name is ignored on the source side too
    src2 = {0: [rec(0, b"a", headers=[("switchyard-origin", b"old")] + h)]}
    assert compare_copies(src2, dst_with(h)).ok


def test_timestamps_type_and_value():
    src = {0: [rec(0, b"a", ts=1000)]}
    assert compare_copies(src, {0: [rec(0, b"a", ts=1001)]}).mismatches == 1
    assert compare_copies(src, {0: [rec(0, b"a", ts=1000, ts_type=2)]}).mismatches == 1
    assert compare_copies(src, {0: [rec(0, b"a", ts=1001, ts_type=2)]}, check_timestamps=False).ok


def test_null_and_empty_keys_and_values():
    src = {0: [rec(0, None, value=None), rec(1, b"", value=b""), rec(2, None, value=b"x")]}
    assert compare_copies(src, {0: renumber(src[0])}).ok
    rep = compare_copies(src, {0: renumber([src[0][0], rec(0, b"", value=None), src[0][2]])})
    assert counts(rep) == (1, 0, 1, 0, 0)


def test_examples_are_limited_and_summarised():
    src = {0: [rec(i, f"k{i}".encode()) for i in range(50)]}
    rep = compare_copies(src, {0: []}, max_examples=3)
    assert rep.missing == 50 and len(rep.examples) == 3 and len(rep.partitions[0].examples) == 3
    text = str(rep)
    assert text.startswith("src 50 records, dst 0: missing 50") and text.count("\n") == 3
