"""R1 by a property of the query caption, in buckets up to a cap and one beyond it."""
import pytest

from hgan.evaluation import breakdown


def test_buckets_up_to_the_cap_then_one_beyond_it():
    # Ranks (1 = right first) and lengths of 8 queries; cap 6, width 3: 1-3, 4-6, > 6.
    ranks = [1, 2, 1, 1, 5, 1, 3, 0]
    lengths = [2, 3, 4, 6, 5, 9, 12, 2]  # the last query has no match: left out
    buckets = breakdown.r1_by_value(ranks, lengths, cap=6, width=3, start=1)
    assert [b.label for b in buckets] == ["1–3", "4–6", "> 6"]
    assert [b.queries for b in buckets] == [2, 3, 2]
    assert [b.r1 for b in buckets] == [pytest.approx(50.0), pytest.approx(200 / 3), 50.0]
    assert [b.beyond_cap for b in buckets] == [False, False, True]


def test_single_values_and_an_empty_bucket():
    # Noun phrases per caption, cap 2: buckets 0, 1, 2, > 2; nobody has exactly 1.
    buckets = breakdown.r1_by_value([1, 2, 1, 1], [0, 2, 2, 5], cap=2)
    assert [b.label for b in buckets] == ["0", "1", "2", "> 2"]
    assert [b.queries for b in buckets] == [1, 0, 2, 1]
    assert buckets[1].r1 is None and buckets[2].r1 == 50.0 and buckets[3].r1 == 100.0


def test_the_last_bucket_below_the_cap_stops_at_the_cap():
    buckets = breakdown.r1_by_value([1] * 3, [1, 7, 8], cap=7, width=3, start=1)
    assert [b.label for b in buckets] == ["1–3", "4–6", "7", "> 7"]
    assert breakdown.length_width(62) == 8 and breakdown.length_width(14) == 2
    assert breakdown.length_width(3) == 1


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="3 ranks but 2 values"):
        breakdown.r1_by_value([1, 1, 1], [1, 2], cap=4)
    with pytest.raises(ValueError, match="width >= 1"):
        breakdown.r1_by_value([1], [1], cap=4, width=0)
