"""Text-to-image R1 by a property of the query caption (its length in WordPieces, its number
of noun phrases), in buckets up to the config's cap and one bucket beyond it: where the
tokenizer's truncation (``data.max_len``) or the phrase cap (``data.max_phrases``) cuts
captions, their R1 shows apart from the rest."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bucket:
    """The queries whose value lies in [low, high] (``high`` None: above the cap)."""

    low: int
    high: Optional[int]
    queries: int  # queries in the bucket that have a relevant gallery item
    r1: Optional[float]  # percent; None for an empty bucket

    @property
    def beyond_cap(self) -> bool:
        return self.high is None

    @property
    def label(self) -> str:
        if self.high is None:
            return f"> {self.low - 1}"
        return str(self.low) if self.low == self.high else f"{self.low}–{self.high}"


def r1_by_value(ranks, values, cap: int, width: int = 1, start: int = 0) -> list[Bucket]:
    """Buckets of ``width`` values from ``start`` up to ``cap``, then one of every value
    above ``cap``; each with the R1 of its queries.

    Args:
      ranks: [Q] first-match ranks (``hgan.evaluation.metrics.first_match_rank``; 0 = the
        query has no relevant gallery item and is left out, as the metrics leave it out).
      values: [Q] the property of each query (e.g. WordPieces before truncation).
      cap: the largest value kept whole; the last bucket holds the values above it.
    """
    ranks, values = np.asarray(ranks), np.asarray(values)
    if ranks.shape != values.shape:
        raise ValueError(f"{ranks.shape[0]} ranks but {values.shape[0]} values")
    if width < 1 or cap < start:
        raise ValueError(f"buckets need width >= 1 and cap >= start (width {width}, cap "
                         f"{cap}, start {start})")
    matched = ranks > 0
    edges = [(low, min(low + width - 1, cap)) for low in range(start, cap + 1, width)]
    out = []
    for low, high in edges + [(cap + 1, None)]:
        inside = matched & (values >= low) & (True if high is None else values <= high)
        n = int(inside.sum())
        out.append(Bucket(low, high, n, 100.0 * float(np.mean(ranks[inside] == 1)) if n
                          else None))
    return out


def length_width(cap: int, buckets: int = 8) -> int:
    """A bucket width that splits 1..cap into at most ``buckets`` buckets."""
    return max(1, math.ceil(cap / buckets))
