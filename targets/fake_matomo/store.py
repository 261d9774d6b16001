"""What the fake Matomo recorded, and the counters tests and benchmarks read.

Everything that depends on earlier requests happens in ``Recorder.commit`` under one lock,
so a bulk batch is all-or-nothing like Matomo's one-transaction bulk import:

* backdating: a hit dated before the latest recorded hit of the same visitor fails (a
  single hit gets 500, a bulk batch gets 500 and nothing from it is kept);
* a repeated ecommerce order id (``ec_id`` with ``idgoal=0``) on the same site is excluded;
* duplicates (same site, visitor, pv_id, action parameters and second) are counted.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .model import VISIT_INACTIVITY_SECONDS, Hit, Site
from .rules import Outcome

# Parameters that differ between two sends of the same action and say nothing about it.
_VOLATILE_PARAMS = frozenset({"rand", "token_auth", "send_image", "queuedtracking", "cdt", "cdo"})


@dataclass(slots=True)
class CommitResult:
    """``conflict`` is the index of the first backdated hit (then nothing was recorded)."""

    conflict: int | None = None
    conflict_latest: float = 0.0
    recorded: int = 0


# Count-only mode keeps at most this many visitors, order ids and duplicate signatures
# (a full map forgets its oldest entries down to 3/4 of the limit), so memory stays
# bounded in long benchmarks. Rules then only see the recent part of the history.
COUNT_ONLY_KEY_LIMIT = 1_000_000  # about 300 MB when every hit is a new visitor


class Recorder:
    """Thread-safe store of recorded hits and counters.

    With ``keep_hits=False`` (benchmarks) only counters, the latest time per visitor (needed
    for the backdating rule), order ids and duplicate signatures are kept, each bounded by
    ``key_limit`` (default ``COUNT_ONLY_KEY_LIMIT``)."""

    def __init__(
        self,
        sites: dict[int, Site],
        *,
        keep_hits: bool = True,
        clock: Callable[[], float] = time.time,
        key_limit: int | None = None,
    ) -> None:
        self.sites = sites
        self.keep_hits = keep_hits
        self.clock = clock
        self.key_limit = key_limit if key_limit is not None else (None if keep_hits else COUNT_ONLY_KEY_LIMIT)
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.counters: Counter[str] = Counter()
            self.excluded: Counter[str] = Counter()
            self.invalid: Counter[str] = Counter()
            self.rejected: Counter[int] = Counter()
            self.faults_fired: Counter[str] = Counter()
            self.recorded_by_site: Counter[int] = Counter()
            self.api_calls_by_method: Counter[str] = Counter()
            self.hits: dict[int, list[Hit]] = {site_id: [] for site_id in self.sites}
            self.latest: dict[tuple[int, str], float] = {}
            # Ordered "sets" (dict keys), so the oldest can be forgotten first.
            self.order_ids: dict[tuple[int, str], None] = {}
            # (site, config fingerprint) -> {visitor id: (last hit time, user id)}: what
            # Matomo's config_id lookup of a new uid visitor searches (see _match_config).
            self.configs: dict[tuple[int, int], dict[str, tuple[float, str]]] = {}
            self.duplicate_keys: dict[int, None] = {}
            self.hits_by_visitor: Counter[str] = Counter()
            self.hits_by_pv_id: Counter[str] = Counter()
            self.api_calls: list[dict[str, Any]] = []
            self.invalidations: list[dict[str, Any]] = []
            # (site id, local date) that received hits, kept while a stored_500 fault
            # rule is active (see FakeMatomo._begin_site_days).
            self.site_days: set[tuple[int, Any]] = set()
            self.seq = 0

    def count(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.counters[name] += amount

    def count_rejected(self, status: int) -> None:
        with self.lock:
            self.rejected[status] += 1

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.faults_fired[kind] += 1

    def record_api_call(self, method: str, params: dict[str, str]) -> None:
        with self.lock:
            self.api_calls_by_method[method] += 1
            self.api_calls.append({"method": method, "params": params})

    def record_invalidation(self, call: dict[str, Any]) -> None:
        with self.lock:
            self.invalidations.append(call)

    def commit(self, outcomes: list[Outcome], *, bulk: bool) -> CommitResult:
        """Apply the outcomes of one request (one for a single hit, the batch for bulk).

        Outcomes of kind "record" may turn into "exclude" (repeated order id). On a
        backdating conflict nothing is recorded and the result names the culprit. Times
        compare in whole seconds, as Matomo stores them."""
        with self.lock:
            now = self.clock()
            pending: list[Outcome] = []
            pending_latest: dict[tuple[int, str], float] = {}
            pending_orders: set[tuple[int, str]] = set()
            latest = self.latest
            for index, outcome in enumerate(outcomes):
                if outcome.kind != "record":
                    continue
                params = outcome.params
                order_id = params.get("ec_id") if params.get("idgoal") == "0" else None
                if order_id:
                    order_key = (outcome.site_id, order_id)
                    if order_key in self.order_ids or order_key in pending_orders:
                        outcome.kind = "exclude"
                        outcome.reason = "ec_id_repeat"
                        continue
                    pending_orders.add(order_key)
                if not outcome.explicit_time:
                    outcome.time = now
                key = (outcome.site_id, outcome.visitor_id)
                if outcome.uid and key not in pending_latest and key not in latest:
                    adopted = self._match_config(outcome, pending)
                    if adopted is not None:
                        outcome.visitor_id = adopted
                        outcome.reason = "uid_matched_by_fingerprint"
                        key = (outcome.site_id, adopted)
                previous = pending_latest.get(key)
                if previous is None:
                    previous = latest.get(key)
                if previous is not None and int(outcome.time) < int(previous):
                    # Undo the provisional exclusions: nothing of this request happened.
                    for other in outcomes:
                        if other.reason == "ec_id_repeat" and other.kind == "exclude":
                            other.kind, other.reason = "record", ""
                    self.counters["hits_received"] += len(outcomes)
                    self.counters["backdated"] += 1
                    if bulk:
                        self.counters["rolled_back"] += sum(1 for o in outcomes if o.kind == "record")
                        self.counters["rolled_back_batches"] += 1
                    return CommitResult(conflict=index, conflict_latest=previous)
                pending_latest[key] = max(outcome.time, previous) if previous is not None else outcome.time
                pending.append(outcome)

            counters = self.counters
            counters["hits_received"] += len(outcomes)
            for outcome in outcomes:
                kind = outcome.kind
                if kind == "invalid":
                    counters["invalid"] += 1
                    self.invalid[outcome.reason] += 1
                elif kind in ("exclude", "empty", "disabled"):
                    counters["tracked"] += 1
                    counters["excluded"] += 1
                    self.excluded[outcome.reason] += 1
            counters["tracked"] += len(pending)
            counters["recorded"] += len(pending)
            for outcome in pending:
                if outcome.reason == "uid_matched_by_fingerprint":
                    counters["uid_matched_by_fingerprint"] += 1
                if outcome.config_id:
                    by_visitor = self.configs.setdefault((outcome.site_id, outcome.config_id), {})
                    _, user_id = by_visitor.get(outcome.visitor_id, (0.0, ""))
                    by_visitor[outcome.visitor_id] = (outcome.time, outcome.uid or user_id)
            self.order_ids.update(dict.fromkeys(pending_orders))
            latest.update(pending_latest)
            keep = self.keep_hits
            for outcome in pending:
                self.seq += 1
                site_id = outcome.site_id
                params = outcome.params
                pv_id = params.get("pv_id", "")
                self.recorded_by_site[site_id] += 1
                signature = hash(
                    (
                        site_id,
                        outcome.visitor_id,
                        pv_id,
                        int(outcome.time),
                        frozenset(item for item in params.items() if item[0] not in _VOLATILE_PARAMS),
                    )
                )
                if signature in self.duplicate_keys:
                    counters["duplicates"] += 1
                else:
                    self.duplicate_keys[signature] = None
                if keep:
                    self.hits.setdefault(site_id, []).append(
                        Hit(site_id, params, outcome.time, outcome.visitor_id, pv_id, bulk, self.seq)
                    )
                    self.hits_by_visitor[outcome.visitor_id] += 1
                    if pv_id:
                        self.hits_by_pv_id[pv_id] += 1
            if self.key_limit is not None:
                self._trim(self.key_limit)
            return CommitResult(recorded=len(pending))

    def _match_config(self, outcome: Outcome, pending: list[Outcome]) -> str | None:
        """Matomo's ``Model::findVisitor`` for a hit with ``uid`` whose visitor id (sha1 of
        the uid) has no visit yet: it takes the most recent visit with the same
        configuration fingerprint whose last action is within 30 minutes either side and
        whose user id is empty or the same, and files the hit under that visitor."""
        candidates = dict(self.configs.get((outcome.site_id, outcome.config_id), {}))
        for earlier in pending:  # hits before this one in the same bulk request
            if earlier.site_id == outcome.site_id and earlier.config_id == outcome.config_id:
                _, user_id = candidates.get(earlier.visitor_id, (0.0, ""))
                candidates[earlier.visitor_id] = (earlier.time, earlier.uid or user_id)
        best: tuple[float, str] | None = None
        for visitor_id, (last_time, user_id) in candidates.items():
            if abs(last_time - outcome.time) > VISIT_INACTIVITY_SECONDS or user_id not in ("", outcome.uid):
                continue
            if best is None or last_time > best[0]:
                best = (last_time, visitor_id)
        return best[1] if best is not None else None

    def _trim(self, limit: int) -> None:
        for name in ("latest", "order_ids", "duplicate_keys", "configs"):
            mapping = getattr(self, name)
            if len(mapping) > limit:
                forget = len(mapping) - limit * 3 // 4
                setattr(self, name, dict(itertools.islice(mapping.items(), forget, None)))
                self.counters["forgotten_keys"] += forget

    def snapshot(self, *, detail: bool = False) -> dict[str, Any]:
        """All counters as JSON-ready data (what ``GET /_fake/stats`` returns)."""
        with self.lock:
            c = self.counters
            data: dict[str, Any] = {
                "requests": c["requests"],
                "single_requests": c["single_requests"],
                "bulk_requests": c["bulk_requests"],
                "api_requests": c["api_requests"],
                "hits_received": c["hits_received"],
                "tracked": c["tracked"],
                "recorded": c["recorded"],
                "invalid": c["invalid"],
                "invalid_by_reason": dict(self.invalid),
                "excluded": c["excluded"],
                "excluded_by_reason": dict(self.excluded),
                "rejected_by_status": {str(k): v for k, v in sorted(self.rejected.items())},
                "dropped_bulk_entries": c["dropped_bulk_entries"],
                "backdated": c["backdated"],
                "rolled_back": c["rolled_back"],
                "rolled_back_batches": c["rolled_back_batches"],
                "duplicates": c["duplicates"],
                "uid_matched_by_fingerprint": c["uid_matched_by_fingerprint"],
                "token_in_url": c["token_in_url"],
                "token_in_bulk_entry": c["token_in_bulk_entry"],
                "faults_fired": dict(self.faults_fired),
                "recorded_by_site": {str(k): v for k, v in sorted(self.recorded_by_site.items())},
                "visitors": len(self.latest),
                "api_calls_by_method": dict(self.api_calls_by_method),
                "invalidations": len(self.invalidations),
                "keep_hits": self.keep_hits,
                "forgotten_keys": c["forgotten_keys"],
            }
            if detail:
                data["hits_by_visitor"] = dict(self.hits_by_visitor)
                data["hits_by_pv_id"] = dict(self.hits_by_pv_id)
                data["invalidation_calls"] = list(self.invalidations)
            return data
