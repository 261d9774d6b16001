"""Small, fast sampling helpers shared by the generator.

Weighted picks use precomputed cumulative weights and ``bisect`` on one
``random()`` draw: about 0.3 us, against ~1.5 us for ``random.choices``.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from random import Random
from typing import Generic, TypeVar

T = TypeVar("T")

ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts; stable across processes and Python versions
    (``hash()`` of a str is salted per process, so it cannot be used)."""
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class Weighted(Generic[T]):
    """Items with weights, picked in O(log n) from one uniform draw."""

    __slots__ = ("_bounds", "cumulative", "items", "table", "total")

    def __init__(self, items: Sequence[T], weights: Sequence[float]):
        if len(items) != len(weights):
            raise ValueError("items and weights differ in length")
        self.items = tuple(items)
        self.cumulative = list(accumulate(float(w) for w in weights))
        self.total = self.cumulative[-1] if self.cumulative else 0.0
        # The cumulative weights with the last one made infinite: bisecting them never
        # passes the last item, which is what min(index, last) did for a draw that
        # rounded up to the total, without the call (pick runs ~8 times a visit).
        self._bounds = [*self.cumulative[:-1], math.inf] if self.cumulative else []
        # For the hottest loops, which pick inline without pick()'s call:
        # ``items[bisect_right(bounds, random() * total)]`` is exactly pick().
        self.table = (self.items, self._bounds, self.total)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return self.total > 0

    def pick(self, rng: Random) -> T:
        # random() < 1, but the product can round up to total: _bounds ends in infinity.
        return self.items[bisect_right(self._bounds, rng.random() * self.total)]

    def index_of(self, u: float) -> int:
        """The index for a uniform u in [0, 1)."""
        return min(bisect_right(self.cumulative, u * self.total), len(self.items) - 1)


def zipf_weights(count: int, exponent: float) -> list[float]:
    """Weights 1/rank^exponent: a few items take most picks, like page popularity."""
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def stable_shuffle(items: Sequence[T], label: str) -> list[T]:
    """The same permutation of the same items every time, independent of any run seed,
    so a catalog's popular pages stay popular across runs."""
    shuffled = list(items)
    Random(derive_seed("shuffle", label, len(shuffled))).shuffle(shuffled)
    return shuffled


def pv_ids(rng: Random, count: int) -> list[str]:
    """``count`` of Matomo's page view ids (6 alphanumeric characters each), drawn in
    one loop rather than a call per id (a visit draws one per page)."""
    getrandbits, chars = rng.getrandbits, ALPHANUMERIC
    ids = []
    for _ in range(count):
        bits = getrandbits(36)
        ids.append(
            chars[bits % 62]
            + chars[(bits >> 6) % 62]
            + chars[(bits >> 12) % 62]
            + chars[(bits >> 18) % 62]
            + chars[(bits >> 24) % 62]
            + chars[(bits >> 30) % 62]
        )
    return ids


def pv_id(rng: Random) -> str:
    """Matomo's page view id: 6 alphanumeric characters (one of ``pv_ids``)."""
    return pv_ids(rng, 1)[0]
