"""Pass/fail criteria of a run ("thresholds"), in a small documented syntax::

    success_rate >= 0.99        the whole run
    p95_ms[shop] < 500          only the target named "shop"
    rejected[*] == 0            every target on its own
    errors_rate < 1%            a rate may be written as a percentage

``METRIC[SCOPE] OP NUMBER``: OP is one of < <= > >= == !=. The metrics are in ``METRICS``
(README "Thresholds" lists them too). Thresholds are evaluated once, when the run ends,
against its final counters; a metric without data (a p95 when no request was answered)
fails, because "nothing was measured" must never pass a CI gate. A run may also ask to be
stopped as soon as one has certainly failed (``certainly_failed``): only a limit from above
on a count that never goes down can be known to fail before the end.

Plain Python: the figures come in as the dicts of ``Run.stats`` (telemetry snapshots).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# A telemetry snapshot (TargetStats / RunTotals) or any dict with its keys.
Figures = Mapping[str, Any]

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
EVERY_TARGET = "*"


def _count(key: str) -> Callable[[Figures, Measure], float | None]:
    return lambda data, measure: _number(data.get(key))


def _share(*keys: str) -> Callable[[Figures, Measure], float | None]:
    def share(data: Figures, measure: Measure) -> float | None:
        answered = answered_hits(data)
        if not answered:
            return None
        return sum(_number(data.get(key)) or 0 for key in keys) / answered

    return share


def _latency(name: str) -> Callable[[Figures, Measure], float | None]:
    def latency(data: Figures, measure: Measure) -> float | None:
        values = data.get("latency_ms")
        return _number(values.get(name)) if isinstance(values, dict) else None

    return latency


def _delivered_rate(data: Figures, measure: Measure) -> float | None:
    """Visits started / visits the schedule asked for. The loader's own figure when it
    reports one (``delivered_percent``: against the visits actually due so far); otherwise
    the asked rate times the time the run ran (an average: under a daily curve the asked
    rate of a given hour is above or below it)."""
    reported = _number(data.get("delivered_percent"))  # the live loader's figure (issue 10)
    if reported is not None:
        return reported / 100
    if not measure.asked_visits:
        return None
    return (_number(data.get("visits_started")) or 0) / measure.asked_visits


def _hits_per_second(data: Figures, measure: Measure) -> float | None:
    if not measure.elapsed_seconds:
        return None
    return (_number(data.get("sent")) or 0) / measure.elapsed_seconds


def _errors(data: Figures, measure: Measure | None = None) -> float:
    """Every answered hit that was not accepted: the project's one meaning of "errors"."""
    return answered_hits(data) - (_number(data.get("accepted")) or 0)


def _errors_rate(data: Figures, measure: Measure) -> float | None:
    answered = answered_hits(data)
    return _errors(data) / answered if answered else None


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    read: Callable[[Figures, Measure], float | None]
    is_rate: bool = False


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("success_rate", "accepted hits / hits that got a final answer (0..1)", _share("accepted"), True),
        Metric("errors_rate", "answered hits not accepted / answered hits (1 - success_rate)", _errors_rate, True),
        Metric("rejected_rate", "hits rejected with HTTP 4xx / answered hits", _share("rejected"), True),
        Metric("invalid_rate", "hits Matomo counted invalid / answered hits", _share("invalid"), True),
        Metric("delivered_rate", "visits started / visits the rate asked for", _delivered_rate, True),
        Metric("p50_ms", "median request latency, ms", _latency("p50")),
        Metric("p95_ms", "95th percentile request latency, ms", _latency("p95")),
        Metric("p99_ms", "99th percentile request latency, ms", _latency("p99")),
        Metric("max_ms", "slowest request, ms", _latency("max")),
        Metric("mean_ms", "mean request latency, ms", _latency("mean")),
        Metric("hits", "hits sent", _count("sent")),
        Metric("visits", "visits started", _count("visits_started")),
        Metric("accepted", "hits Matomo accepted", _count("accepted")),
        Metric("invalid", "hits Matomo counted invalid", _count("invalid")),
        Metric("rejected", "hits rejected with HTTP 4xx", _count("rejected")),
        Metric("unaccounted", "hits Matomo skipped without counting them", _count("unaccounted")),
        Metric("server_errors", "hits that ended with HTTP 5xx", _count("server_errors")),
        Metric("network_errors", "hits that got no answer", _count("network_errors")),
        Metric("timeouts", "hits that timed out", _count("timeouts")),
        Metric("errors", "answered hits not accepted (as the summary line and run page count them)", _errors),
        Metric("retries", "requests sent again", _count("retries")),
        Metric("hits_per_second", "hits sent / seconds the run ran", _hits_per_second),
    )
}


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def answered_hits(data: Figures) -> float:
    """Hits with a final answer: every outcome but in flight and abandoned (our own stop)."""
    keys = ("accepted", "invalid", "unaccounted", "rejected", "server_errors", "network_errors", "timeouts")
    return sum(_number(data.get(key)) or 0 for key in keys)


@dataclass(frozen=True)
class Measure:
    """What a scope's figures are measured against: how long it ran and what was asked."""

    elapsed_seconds: float | None = None
    asked_visits: float | None = None


class ThresholdError(ValueError):
    """A threshold that does not parse; the message points at the offending character."""

    def __init__(self, text: str, column: int, problem: str) -> None:
        self.text, self.column, self.problem = text, column, problem
        found = text[column:].strip()
        where = f"at character {column + 1} (“{found[:20]}”)" if found else "at the end"
        super().__init__(f"“{text.strip()}”: {problem} {where}.")

    def pointer(self) -> str:
        """The text with a caret under the error, for a terminal."""
        return f"{self.text}\n{' ' * self.column}^ {self.problem}"


@dataclass(frozen=True)
class Threshold:
    text: str
    metric: str
    op: str
    limit: float
    scope: str | None = None  # None: the whole run; "*": every target; else a target's name

    def check(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.limit)

    @property
    def label(self) -> str:
        scope = f"[{self.scope}]" if self.scope else ""
        return f"{self.metric}{scope} {self.op} {self.limit:g}"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_SPACE = re.compile(r"\s*")


def parse(text: str) -> Threshold:
    """One threshold; raises ThresholdError naming what is wrong and where."""
    position = _skip(text, 0)
    match = _NAME.match(text, position)
    if not match:
        raise ThresholdError(text, position, "expected a metric name such as p95_ms or success_rate")
    metric = match.group()
    if metric not in METRICS:
        raise ThresholdError(text, position, f"unknown metric “{metric}” (known: {', '.join(METRICS)})")
    position = _skip(text, match.end())
    scope = None
    if text.startswith("[", position):
        close = text.find("]", position)
        if close < 0:
            raise ThresholdError(text, len(text), "missing “]” after the target name")
        scope = text[position + 1 : close].strip()
        if not scope:
            raise ThresholdError(text, position, "empty brackets: name a target, or * for every target")
        position = _skip(text, close + 1)
    op = next((op for op in OPERATORS if text.startswith(op, position)), None)
    if op is None:
        hint = " (“==” for equality)" if text.startswith("=", position) else ""
        raise ThresholdError(text, position, f"expected a comparison: <, <=, >, >=, == or !={hint}")
    position = _skip(text, position + len(op))
    match = _NUMBER.match(text, position)
    if not match:
        raise ThresholdError(text, position, "expected a number such as 0.99, 500 or 1%")
    limit = float(match.group())
    position = match.end()
    if text.startswith("%", position):
        if not METRICS[metric].is_rate:
            raise ThresholdError(text, position, f"“%” fits rates only; {metric} is not a rate")
        limit /= 100
        position += 1
    position = _skip(text, position)
    if position < len(text):
        raise ThresholdError(text, position, "unexpected text after the number")
    return Threshold(text.strip(), metric, op, limit, scope)


def _skip(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()  # type: ignore[union-attr]


def parse_many(lines: list[str] | str) -> list[Threshold]:
    """Several thresholds: a list, or a text with one per line (blank lines and lines
    starting with # are skipped). Raises the first ThresholdError."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    return [parse(line) for line in lines if line.strip() and not line.strip().startswith("#")]


def clean_lines(lines: list[str] | str) -> list[str]:
    """The thresholds' texts, normalised (stripped, no blanks or comments), after parsing
    them all (raises the first ThresholdError)."""
    return [threshold.text for threshold in parse_many(lines)]


@dataclass(frozen=True)
class Scope:
    """The figures of the run (name None) or of one target."""

    name: str | None
    data: Figures
    measure: Measure


def evaluate(thresholds: list[Threshold], run_scope: Scope, target_scopes: list[Scope]) -> list[dict[str, Any]]:
    """One result per threshold and scope it applies to, JSON-ready:
    {"threshold", "scope", "metric", "op", "limit", "value", "passed"}."""
    by_name = {scope.name: scope for scope in target_scopes}
    results = []
    for threshold in thresholds:
        if threshold.scope is None:
            scopes = [run_scope]
        elif threshold.scope == EVERY_TARGET:
            scopes = target_scopes
        else:
            scopes = [by_name.get(threshold.scope) or Scope(threshold.scope, {}, Measure())]
        for scope in scopes:
            value = METRICS[threshold.metric].read(scope.data, scope.measure)
            results.append(
                {
                    "threshold": threshold.text,
                    "scope": scope.name or "run",
                    "metric": threshold.metric,
                    "op": threshold.op,
                    "limit": threshold.limit,
                    "value": None if value is None else round(value, 6),
                    "passed": threshold.check(value),
                }
            )
    return results


# Counts that never go down while a run goes on: a hit's final outcome is counted once,
# and a shard's next loader continues its counters.
GROWING_COUNTS = frozenset(
    {
        "hits",
        "visits",
        "accepted",
        "invalid",
        "rejected",
        "unaccounted",
        "server_errors",
        "network_errors",
        "timeouts",
        "errors",
        "retries",
    }
)


def can_fail_early(threshold: Threshold) -> bool:
    """Whether a run can be known to fail ``threshold`` before it ends: a growing count
    held under a limit (<, <=, ==). A rate, a latency or a ">" may still recover."""
    return threshold.metric in GROWING_COUNTS and threshold.op in ("<", "<=", "==")


def early_stop_problem(thresholds: list[Threshold]) -> str:
    """Why stopping as soon as a threshold has certainly failed (a run's ``abort_on_fail``)
    could never stop a run judged by ``thresholds``; "" when one of them can fail early."""
    if any(can_fail_early(threshold) for threshold in thresholds):
        return ""
    if thresholds:
        why = f"none of its thresholds can fail before the end ({'; '.join(t.text for t in thresholds)})"
    else:
        why = "the run has no thresholds"
    return (
        f"Nothing could stop this run early: {why}. Only a count held under a limit can, e.g. rejected == 0 "
        "or errors < 100; rates and latencies are judged at the end."
    )


def certainly_failed(thresholds: list[Threshold], run_scope: Scope, target_scopes: list[Scope]) -> list[dict[str, Any]]:
    """The results (as ``evaluate`` gives them) of thresholds the run has already failed
    for good, whatever it sends from now on: its count is past the limit and can only grow.
    ("rejected == 0" at 3 is certain; "accepted == 100" at 50 is not.)"""
    results = evaluate([t for t in thresholds if can_fail_early(t)], run_scope, target_scopes)
    return [result for result in results if _past_limit(result)]


def _past_limit(result: dict[str, Any]) -> bool:
    value, limit = result["value"], result["limit"]
    if value is None:
        return False
    return value >= limit if result["op"] == "<" else value > limit


def describe_result(result: dict[str, Any]) -> str:
    """ "p95_ms < 500 on shop: 812.4" for a log line or a page."""
    scope = "" if result["scope"] == "run" else f" on {result['scope']}"
    value = "no data" if result["value"] is None else f"{result['value']:g}"
    return f"{result['metric']} {result['op']} {result['limit']:g}{scope}: {value}"
