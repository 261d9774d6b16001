"""Failures on demand: error statuses, hangs, dropped connections, latency.

A ``Fault`` applies to the next ``count`` matching requests, or (with ``probability``) to
a seeded random share of them. Rules are checked in the order they were added; the first
that fires wins. Control endpoints (``/_fake/...``) are never affected.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("status", "hang", "reset", "stored_500")
# tracking = single + bulk hits; any = tracking + Reporting API.
TARGETS = ("tracking", "single", "bulk", "api", "any")
STATUSES = (400, 401, 403, 404, 408, 429, 500, 502, 503, 504)


@dataclass
class Fault:
    """One failure rule.

    kind:
      * ``status``: answer ``status`` (with ``Retry-After: retry_after`` if given) without
        processing the request; a bulk batch is therefore rolled back as a whole. With
        ``processed=True`` the request is processed (and recorded) first, like a proxy
        (nginx before php-fpm) that answers 502/504 after Matomo got the request.
      * ``hang``: wait ``seconds`` (to trigger client timeouts), then process and answer
        normally, like a slow Matomo that still records what it got.
      * ``reset``: close the connection without an answer (TCP reset). With
        ``processed=True`` the request is recorded first (a lost response: a retry then
        sends a duplicate); otherwise nothing is recorded.
      * ``stored_500``: only for a bulk request that starts a site-day (it holds a hit of a
        site and local day on which nothing was recorded before it): the request is
        recorded in full, then answered HTTP 500 ``{"status":"error","tracked":N,
        "invalid":M}`` with N + M = its entries. This follows what docs/matomo-tracking.md
        ("Bulk tracking") reports as measured on Matomo 5.0.2 with MariaDB: concurrent
        bulk requests that start a site-day deadlock on the option table, Matomo swallows
        the deadlock, stores the rest of the request in autocommit, and the final commit
        fails ("There is no active transaction"); Matomo's BulkTracking answer then
        reports every entry as processed. With ``contended=True`` it fires only like the
        measurement: while another request starting the same site-day is being processed.
    ``seconds`` also delays ``status`` and ``reset`` faults.
    count: how many matching requests fire the fault (None = no limit, for probability
    rules). probability + seed: fire for a reproducible random share of requests.
    target: ``tracking`` (single and bulk), ``single``, ``bulk``, ``api`` or ``any``."""

    kind: str = "status"
    status: int = 503
    retry_after: int | str | None = None
    seconds: float = 0.0
    count: int | None = 1
    probability: float | None = None
    seed: int | None = None
    target: str = "tracking"
    processed: bool = False
    contended: bool = False
    fired: int = 0
    # Multi-process mode: index of this rule's counter in memory shared by all workers, so
    # "the next N requests" means N across the whole cluster.
    slot: int | None = None
    _rng: random.Random = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, not {self.kind!r}")
        if self.target not in TARGETS:
            raise ValueError(f"fault target must be one of {TARGETS}, not {self.target!r}")
        if self.kind == "status" and int(self.status) not in STATUSES:
            raise ValueError(f"fault status must be one of {STATUSES}, not {self.status!r}")
        self.status = int(self.status)
        self.seconds = float(self.seconds)
        if self.count is not None:
            self.count = int(self.count)
        if self.probability is not None:
            self.probability = float(self.probability)
            if not 0.0 <= self.probability <= 1.0:
                raise ValueError("fault probability must be between 0 and 1")
        self._rng = random.Random(self.seed)

    def applies_to(self, request_kind: str) -> bool:
        """request_kind is "single", "bulk" or "api"."""
        if self.target == "any":
            return True
        if self.target == "tracking":
            return request_kind in ("single", "bulk")
        return self.target == request_kind

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_rng", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        allowed = {
            "kind",
            "status",
            "retry_after",
            "seconds",
            "count",
            "probability",
            "seed",
            "target",
            "processed",
            "contended",
            "slot",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


class FaultPlan:
    """The active fault rules and the per-request latency; thread-safe."""

    def __init__(self, shared_counters: Any = None) -> None:
        self.lock = threading.Lock()
        self.rules: list[Fault] = []
        # A multiprocessing.Array("q") shared by all worker processes (see cluster.py).
        self.shared_counters = shared_counters
        self.latency = 0.0
        self.latency_jitter = 0.0
        self._latency_rng = random.Random(0)

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.latency = 0.0
            self.latency_jitter = 0.0

    def set_latency(self, seconds: float, jitter: float = 0.0, seed: int | None = 0) -> None:
        with self.lock:
            self.latency = max(0.0, float(seconds))
            self.latency_jitter = max(0.0, float(jitter))
            self._latency_rng = random.Random(seed)

    def next_latency(self) -> float:
        if not self.latency and not self.latency_jitter:
            return 0.0
        with self.lock:
            return self.latency + (self._latency_rng.random() * self.latency_jitter if self.latency_jitter else 0.0)

    def has_stored_500(self) -> bool:
        """Whether a ``stored_500`` rule is active (the server then tracks site-days)."""
        return any(fault.kind == "stored_500" for fault in self.rules)

    def pick(self, request_kind: str, *, starts_site_day: bool = False, contended: bool = False) -> Fault | None:
        """The fault for this request, if any (and count it as fired). ``stored_500`` rules
        are only considered for a bulk request that starts a site-day (``starts_site_day``,
        and ``contended`` when the rule asks for it); the server asks for them once it
        knows, after parsing the request."""
        if not self.rules:
            return None
        with self.lock:
            for fault in self.rules:
                if (fault.kind == "stored_500") != starts_site_day or (fault.contended and not contended):
                    continue
                shared = self.shared_counters is not None and fault.slot is not None and fault.count is not None
                if (not shared and fault.exhausted) or not fault.applies_to(request_kind):
                    continue
                if fault.probability is not None and fault._rng.random() >= fault.probability:
                    continue
                if shared:
                    counters = self.shared_counters
                    with counters.get_lock():
                        if counters[fault.slot] >= fault.count:
                            continue
                        counters[fault.slot] += 1
                fault.fired += 1
                return fault
            return None

    def _as_dict(self, fault: Fault) -> dict[str, Any]:
        data = fault.as_dict()
        if self.shared_counters is not None and fault.slot is not None:
            data["fired"] = self.shared_counters[fault.slot]
        return data

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "rules": [self._as_dict(f) for f in self.rules],
                "latency": self.latency,
                "latency_jitter": self.latency_jitter,
            }
