"""Small, fast sampling helpers shared by the generator.

Weighted picks use precomputed cumulative weights and ``bisect`` on one
``random()`` draw: about 0.3 us, against ~1.5 us for ``random.choices``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from random import Random
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class Draws(Protocol):
    """What a sampler asks of its source of randomness: a ``Random``, or ``DigestDraws``."""

    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...


# A 64-byte digest (blake2b's longest) read as a 64-bit seed, then 14 32-bit words.
_DIGEST_LAYOUT = struct.Struct(">Q14I")
DIGEST_SIZE = _DIGEST_LAYOUT.size
DIGEST_UNIFORMS = 12  # words 0..11 are random(), words 12..13 the 64 bits of getrandbits
_WORD_SCALE = 2.0**-32


class DigestDraws:
    """The draws that one hash digest holds: ``seed`` (64 bits), then up to
    DIGEST_UNIFORMS ``random()`` values (32 bits of resolution each, plenty for a weighted
    pick) and 64 bits for ``getrandbits``.

    A returning visitor's traits derive from its member number alone (see
    visitors.Members.member_digest) and take about ten draws. Seeding a Mersenne Twister
    for them cost ~3.8 us per new member, most of what a member cost and a tenth of a
    busy live stream's generation; reading them off the digest that names the member
    costs ~1.7 us (0.8 to unpack it, ~0.1 a draw). More draws than the digest holds raise
    StopIteration (a test keeps the trait sampler within them)."""

    __slots__ = ("_bits", "_bits_left", "random", "seed")

    def __init__(self, digest: bytes) -> None:
        seed, *words = _DIGEST_LAYOUT.unpack(digest)
        self.seed: int = seed
        self.random = map(_WORD_SCALE.__mul__, words[:DIGEST_UNIFORMS]).__next__
        self._bits = words[DIGEST_UNIFORMS] << 32 | words[DIGEST_UNIFORMS + 1]
        self._bits_left = 64

    def getrandbits(self, k: int, /) -> int:
        if not 0 <= k <= self._bits_left:
            raise ValueError(f"{k} random bits asked, {self._bits_left} left in the digest")
        self._bits_left -= k
        return (self._bits >> self._bits_left) & ((1 << k) - 1)


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

    def pick(self, rng: Draws) -> T:
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
