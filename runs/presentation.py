"""What the run pages show, computed from a run and its rows: the figures of a telemetry
snapshot (``Run.stats``), a run as the dashboard lists it, per-target rows and the
per-minute charts. Plain objects for templates; the views in runs/views.py do the queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from django.utils import timezone

from runs.models import Run, RunSample, RunShard, RunTarget
from trafficinator.sending.telemetry import RunTotals, TargetStats

CHART_MINUTES = 60

# --- figures --------------------------------------------------------------------------------


LatencyName = Literal["p50", "p95", "p99", "max", "mean"]


class Figures:
    """One telemetry snapshot for templates: a run's totals (``Run.totals``) or one
    target's entry in ``Run.stats["targets"]``, read through their TypedDicts
    (trafficinator.sending.telemetry). A key the loader has not reported reads as 0 or
    None: nothing is reported before the first snapshot, and runs recorded by an older
    loader lack the keys added since (``TargetStats`` is ``total=False``)."""

    def __init__(self, data: TargetStats | RunTotals) -> None:
        self.data = data

    @property
    def has_data(self) -> bool:
        return bool(self.data)

    # --- counters -------------------------------------------------------------------

    @property
    def visits_started(self) -> int:
        return self.data.get("visits_started", 0)

    @property
    def visits_delivered(self) -> int:
        return self.data.get("visits_delivered", 0)

    @property
    def possibly_duplicated(self) -> int:
        return self.data.get("possibly_duplicated", 0)

    @property
    def hits_sent(self) -> int:
        return self.data.get("sent", 0)

    @property
    def accepted(self) -> int:
        return self.data.get("accepted", 0)

    @property
    def invalid(self) -> int:
        return self.data.get("invalid", 0)

    @property
    def unaccounted(self) -> int:
        return self.data.get("unaccounted", 0)

    @property
    def rejected(self) -> int:
        return self.data.get("rejected", 0)

    @property
    def server_errors(self) -> int:
        return self.data.get("server_errors", 0)

    @property
    def network_errors(self) -> int:
        return self.data.get("network_errors", 0)

    @property
    def timeouts(self) -> int:
        return self.data.get("timeouts", 0)

    @property
    def abandoned(self) -> int:
        return self.data.get("abandoned", 0)

    @property
    def retries(self) -> int:
        return self.data.get("retries", 0)

    @property
    def errors(self) -> int:
        return self.data.get("errors", 0)

    @property
    def in_flight(self) -> int:
        return self.data.get("in_flight", 0)

    @property
    def visits_behind(self) -> int:
        return self.data.get("visits_behind", 0)

    @property
    def late_hits(self) -> int:
        return self.data.get("late_hits", 0)

    # --- rates and health -----------------------------------------------------------

    @property
    def hits_per_second(self) -> float:
        return self.data.get("hits_per_second", 0.0)

    @property
    def lag_seconds(self) -> float:
        return self.data.get("lag_seconds", 0.0)

    @property
    def visits_per_day(self) -> int | None:
        """The current rate when the loader reports it (None otherwise)."""
        return self.data.get("visits_per_day")

    @property
    def success_share(self) -> float | None:
        """Accepted hits as a share of the hits that got a final answer (0..1)."""
        answered = self.accepted + self.errors
        return self.accepted / answered if answered else None

    @property
    def success_percent(self) -> float | None:
        share = self.success_share
        return None if share is None else share * 100

    def latency(self, name: LatencyName) -> float | None:
        latency = self.data.get("latency_ms")
        return latency.get(name) if latency else None

    @property
    def latencies(self) -> list[float | None]:
        """p50, p95 and p99 in milliseconds."""
        return [self.latency("p50"), self.latency("p95"), self.latency("p99")]

    @property
    def p95_ms(self) -> float | None:
        return self.latency("p95")

    @property
    def degraded(self) -> bool:
        """A target's own flag; a run's totals list their degraded targets instead."""
        return bool(self.data.get("degraded") or self.data.get("degraded_targets"))

    @property
    def degraded_reason(self) -> str:
        return self.data.get("degraded_reason") or ""

    @property
    def saturated(self) -> bool:
        """The loader cannot keep up with the asked rate (see runs.loader)."""
        return self.data.get("saturated", False)

    @property
    def fell_behind(self) -> bool:
        """Saturated now, or visits or hits were not sent on schedule at some point."""
        return self.saturated or bool(self.visits_behind or self.late_hits)

    @property
    def delivered_percent(self) -> float | None:
        return self.data.get("delivered_percent")

    @property
    def wait_p95_ms(self) -> float | None:
        """The loader's own wait before sending (not part of the latency)."""
        wait = self.data.get("wait_ms")
        return wait.get("p95") if wait else None


def format_elapsed(elapsed: timedelta | None) -> str:
    """ "2 h 05 min", "3 min 07 s", "12 s"; "" before a run started."""
    if elapsed is None:
        return ""
    seconds = max(0, int(elapsed.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def hits_per_second(run: Run, figures: Figures) -> float:
    """The loader's rate over the last minute while the run is active; its average once ended."""
    if run.is_active:
        return figures.hits_per_second
    elapsed = run.elapsed()
    seconds = elapsed.total_seconds() if elapsed else 0
    return figures.hits_sent / seconds if seconds else 0.0


@dataclass
class TargetRow:
    run_target: RunTarget
    visits_per_day: int
    figures: Figures
    hits_per_second: float

    @property
    def name(self) -> str:
        return self.run_target.target.name


def target_rows(run: Run, siblings: list[RunTarget]) -> list[TargetRow]:
    """Per-target figures of ``run``, whose run targets (with their targets) are ``siblings``."""
    per_target = run.stats_snapshot["targets"]
    rows = []
    for rt in sorted(siblings, key=lambda rt: rt.target.name):
        figures = Figures(per_target.get(str(rt.pk), {}))
        rows.append(TargetRow(rt, rt.share_of(run, siblings), figures, hits_per_second(run, figures)))
    return rows


@dataclass
class ShardRow:
    """One loader of a run, as the run page shows it."""

    shard: RunShard
    run: Run

    @property
    def lost(self) -> bool:
        return self.shard.is_lost()

    @property
    def label(self) -> str:
        return f"{self.shard.index + 1}/{self.run.shard_count}"

    @property
    def state(self) -> str:
        return "lost" if self.lost else self.shard.get_status_display()

    @property
    def state_class(self) -> str:
        return "lost" if self.lost else self.shard.status

    @property
    def totals(self) -> RunTotals:
        return self.shard.stats_snapshot["totals"]

    @property
    def hits_per_second(self) -> float:
        """The shard's rate now; 0 once it ended (its last snapshot's rate is history)."""
        if self.shard.status not in RunShard.CLAIMED_STATUSES:
            return 0.0
        return self.shard.hits_per_second


class LiveRun:
    """A run with what its panels show: figures, per-target rows and charts."""

    def __init__(self, run: Run, samples: list[RunSample] | None = None, *, with_targets: bool = True) -> None:
        self.run = run
        self.figures = Figures(run.totals)
        # run.run_targets is prefetched with the targets by the callers that want them.
        self.targets = target_rows(run, list(run.run_targets.all())) if with_targets else []
        self.shards = [ShardRow(shard, run) for shard in run.shard_list()]
        self.lost = any(row.lost for row in self.shards) and run.status in (Run.Status.RUNNING, Run.Status.STOPPING)
        self.elapsed = format_elapsed(run.elapsed())
        self.samples = samples
        self.duration_limit = format_elapsed(timedelta(seconds=run.duration_seconds)) if run.duration_seconds else ""

    @property
    def hits_per_second(self) -> float:
        return hits_per_second(self.run, self.figures)

    @property
    def degraded_targets(self) -> list[TargetRow]:
        return [row for row in self.targets if row.figures.degraded]

    @property
    def status_label(self) -> str:
        return "Loader lost" if self.lost else self.run.get_status_display()

    @property
    def status_class(self) -> str:
        return "lost" if self.lost else self.run.status

    @property
    def traffic_charts(self) -> list[Chart]:
        end = chart_end(self.run)
        return traffic_charts(self.samples or [], end, chart_minutes(self.run, end))


# --- charts (inline SVG, drawn by templates/runs/partials/chart.html) -----------------------
# One series per chart, each on its own labelled scale (errors drawn on the hits' scale
# looked as large as the hits). The window is the last hour, or the whole run if shorter,
# so a three-minute run fills the chart instead of a sliver at its right edge.

CHART_WIDTH = 600
CHART_HEIGHT = 100


@dataclass
class Bar:
    x: float
    y: float
    height: float
    title: str


@dataclass
class Series:
    css_class: str
    bars: list[Bar]


@dataclass
class Chart:
    title: str
    unit: str
    peak: float
    series: list[Series]
    minutes: int
    start_label: str
    end_label: str
    has_samples: bool = True
    scale_max: float = 0.0
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT

    @property
    def bar_width(self) -> float:
        slot = self.width / self.minutes
        return round(slot - min(2.0, slot / 4), 2)

    @property
    def y_labels(self) -> list[float]:
        """The y axis from the top: the scale's top, its middle, zero."""
        return [self.scale_max, self.scale_max / 2, 0]

    @property
    def window_label(self) -> str:
        return "the last hour" if self.minutes >= CHART_MINUTES else f"the whole run ({self.minutes} min)"

    @property
    def note(self) -> str:
        if not self.has_samples:
            return "no samples yet"
        return "" if self.peak else "none"


def chart_end(run: Run) -> datetime:
    """Charts end now, or at the end of a finished run."""
    return run.finished_at or timezone.now()


def chart_minutes(run: Run, end: datetime) -> int:
    """Minutes the charts show: the last hour, or the whole run if it is shorter."""
    first = (run.started_at or end).replace(second=0, microsecond=0)
    minutes = int((end.replace(second=0, microsecond=0) - first).total_seconds()) // 60
    return max(1, min(CHART_MINUTES, minutes + 1))


def samples_since(end: datetime, minutes: int = CHART_MINUTES) -> datetime:
    return end.replace(second=0, microsecond=0) - timedelta(minutes=minutes)


def minute_slots(samples: list[RunSample], end: datetime, minutes: int = CHART_MINUTES) -> list[RunSample | None]:
    """The ``minutes`` minutes up to ``end``, oldest first, None where no sample."""
    slots: list[RunSample | None] = [None] * minutes
    last = end.replace(second=0, microsecond=0)
    for sample in samples:
        index = minutes - 1 - int((last - sample.minute).total_seconds() // 60)
        if 0 <= index < minutes:
            slots[index] = sample
    return slots


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value``: readable axis labels."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _bars(slots: list[RunSample | None], field: str, scale_max: float, unit: str) -> list[Bar]:
    slot_width = CHART_WIDTH / len(slots)
    bars = []
    for index, slot in enumerate(slots):
        value = getattr(slot, field) if slot else None
        if slot and value:
            height = max(1.0, round(value / scale_max * CHART_HEIGHT, 1))
            title = f"{timezone.localtime(slot.minute):%H:%M}: {value:,g} {unit}"
            bars.append(Bar(round(index * slot_width + 1, 1), round(CHART_HEIGHT - height, 1), height, title))
    return bars


def _chart(title: str, field: str, unit: str, css_class: str, slots: list[RunSample | None], end: datetime) -> Chart:
    peak = max((getattr(slot, field) or 0 for slot in slots if slot), default=0)
    scale_max = nice_ceiling(peak)
    last = end.replace(second=0, microsecond=0)
    first = last - timedelta(minutes=len(slots) - 1)
    return Chart(
        title,
        unit,
        peak,
        [Series(css_class, _bars(slots, field, scale_max, unit.split("/")[0]))],
        minutes=len(slots),
        start_label=f"{timezone.localtime(first):%H:%M}",
        end_label="now" if timezone.now() - end < timedelta(minutes=1) else f"{timezone.localtime(last):%H:%M}",
        has_samples=any(slots),
        scale_max=scale_max,
    )


def traffic_charts(samples: list[RunSample], end: datetime, minutes: int = CHART_MINUTES) -> list[Chart]:
    """The dashboard's small charts: hits and errors per minute, each on its own scale."""
    slots = minute_slots(samples, end, minutes)
    return [
        _chart("Hits per minute", "hits", "hits/min", "hits", slots, end),
        _chart("Errors per minute", "errors", "errors/min", "errors", slots, end),
    ]


def run_charts(samples: list[RunSample], end: datetime, minutes: int = CHART_MINUTES) -> list[Chart]:
    """The run page's charts: hits, errors and p95 latency per minute."""
    slots = minute_slots(samples, end, minutes)
    return [
        _chart("Hits per minute", "hits", "hits/min", "hits", slots, end),
        _chart("Errors per minute", "errors", "errors/min", "errors", slots, end),
        _chart("p95 latency per minute", "p95_ms", "ms", "latency", slots, end),
    ]
