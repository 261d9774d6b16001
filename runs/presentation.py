"""What the run pages show, computed from a run and its rows: the figures of a telemetry
snapshot (``Run.stats``), a run as the dashboard lists it, per-target rows and the
per-minute charts. Plain objects for templates; the views in runs/views.py do the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from runs.models import Run, RunSample, RunTarget

CHART_MINUTES = 60

# --- figures --------------------------------------------------------------------------------


def _number(key: str) -> property:
    return property(lambda self: self.number(key))


class Figures:
    """One telemetry snapshot for templates: ``Run.stats["totals"]`` or one target's entry
    in ``Run.stats["targets"]`` (keys from trafficinator.sending.telemetry). Missing keys read as 0,
    so a run whose loader has not reported yet renders too."""

    visits_started = _number("visits_started")
    visits_delivered = _number("visits_delivered")
    possibly_duplicated = _number("possibly_duplicated")
    hits_sent = _number("sent")
    accepted = _number("accepted")
    invalid = _number("invalid")
    unaccounted = _number("unaccounted")
    rejected = _number("rejected")
    server_errors = _number("server_errors")
    network_errors = _number("network_errors")
    timeouts = _number("timeouts")
    abandoned = _number("abandoned")
    retries = _number("retries")
    errors = _number("errors")
    in_flight = _number("in_flight")
    hits_per_second = _number("hits_per_second")
    visits_behind = _number("visits_behind")
    lag_seconds = _number("lag_seconds")
    late_hits = _number("late_hits")

    def __init__(self, data: object) -> None:
        self.data = data if isinstance(data, dict) else {}

    def number(self, key: str) -> int | float:
        value = self.data.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else 0

    @property
    def has_data(self) -> bool:
        return bool(self.data)

    @property
    def visits_per_day(self) -> int | float | None:
        """The current rate when the loader reports it (None otherwise)."""
        value = self.data.get("visits_per_day")
        return value if isinstance(value, int | float) else None

    @property
    def success_share(self) -> float | None:
        """Accepted hits as a share of the hits that got a final answer (0..1)."""
        answered = self.accepted + self.errors
        return self.accepted / answered if answered else None

    @property
    def success_percent(self) -> float | None:
        share = self.success_share
        return None if share is None else share * 100

    def latency(self, name: str) -> float | None:
        latency = self.data.get("latency_ms")
        value = latency.get(name) if isinstance(latency, dict) else None
        return value if isinstance(value, int | float) else None

    @property
    def latencies(self) -> list[float | None]:
        """p50, p95 and p99 in milliseconds."""
        return [self.latency("p50"), self.latency("p95"), self.latency("p99")]

    @property
    def p95_ms(self) -> float | None:
        return self.latency("p95")

    @property
    def degraded(self) -> bool:
        return bool(self.data.get("degraded") or self.data.get("degraded_targets"))

    @property
    def degraded_reason(self) -> str:
        return self.data.get("degraded_reason") or ""

    @property
    def saturated(self) -> bool:
        """The loader cannot keep up with the asked rate (see runs.loader)."""
        return bool(self.data.get("saturated"))

    @property
    def fell_behind(self) -> bool:
        """Saturated now, or visits or hits were not sent on schedule at some point."""
        return self.saturated or bool(self.visits_behind or self.late_hits)

    @property
    def delivered_percent(self) -> float | None:
        value = self.data.get("delivered_percent")
        return value if isinstance(value, int | float) else None

    @property
    def wait_p95_ms(self) -> float | None:
        """The loader's own wait before sending (not part of the latency)."""
        wait = self.data.get("wait_ms")
        value = wait.get("p95") if isinstance(wait, dict) else None
        return value if isinstance(value, int | float) else None


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
    per_target = run.stats.get("targets", {}) if isinstance(run.stats, dict) else {}
    rows = []
    for rt in sorted(siblings, key=lambda rt: rt.target.name):
        figures = Figures(per_target.get(str(rt.pk)))
        rows.append(TargetRow(rt, rt.share_of(run, siblings), figures, hits_per_second(run, figures)))
    return rows


class LiveRun:
    """A run with what its panels show: figures, per-target rows and charts."""

    def __init__(self, run: Run, samples: list[RunSample] | None = None, *, with_targets: bool = True) -> None:
        self.run = run
        self.figures = Figures(run.totals)
        # run.run_targets is prefetched with the targets by the callers that want them.
        self.targets = target_rows(run, list(run.run_targets.all())) if with_targets else []
        self.lost = run.is_lost()
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
    def traffic_chart(self) -> Chart:
        return traffic_chart(self.samples or [], chart_end(self.run))


# --- charts (inline SVG, drawn by templates/runs/partials/chart.html) -----------------------

CHART_WIDTH = 600
CHART_HEIGHT = 100
SLOT_WIDTH = CHART_WIDTH / CHART_MINUTES


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
    end_label: str
    has_samples: bool = True
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    bar_width: float = SLOT_WIDTH - 2

    @property
    def note(self) -> str:
        if not self.has_samples:
            return "no samples yet"
        return "" if self.peak else "none"


def chart_end(run: Run) -> datetime:
    """Charts show the hour before now, or before the end of a finished run."""
    return run.finished_at or timezone.now()


def samples_since(end: datetime) -> datetime:
    return end.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES)


def minute_slots(samples: list[RunSample], end: datetime) -> list[RunSample | None]:
    """The last CHART_MINUTES minutes up to ``end``, oldest first, None where no sample."""
    slots: list[RunSample | None] = [None] * CHART_MINUTES
    last = end.replace(second=0, microsecond=0)
    for sample in samples:
        index = CHART_MINUTES - 1 - int((last - sample.minute).total_seconds() // 60)
        if 0 <= index < CHART_MINUTES:
            slots[index] = sample
    return slots


def _values(slots: list[RunSample | None], field: str) -> list[float | None]:
    return [getattr(slot, field) if slot else None for slot in slots]


def _peak(*values: list[float | None]) -> float:
    return max((value or 0 for series in values for value in series), default=0)


def _scaled(value: float, peak: float) -> float:
    return round(value / peak * CHART_HEIGHT, 1) if peak else 0.0


def _bars(slots: list[RunSample | None], field: str, peak: float, unit: str) -> list[Bar]:
    bars = []
    for index, slot in enumerate(slots):
        value = getattr(slot, field) if slot else None
        if slot and value:
            height = max(1.0, _scaled(value, peak))
            title = f"{timezone.localtime(slot.minute):%H:%M}: {value:g} {unit}"
            bars.append(Bar(round(index * SLOT_WIDTH + 1, 1), round(CHART_HEIGHT - height, 1), height, title))
    return bars


def _end_label(end: datetime) -> str:
    return "now" if timezone.now() - end < timedelta(minutes=1) else "end"


def traffic_chart(samples: list[RunSample], end: datetime) -> Chart:
    """The dashboard's small chart: hits and errors per minute over the last hour."""
    slots = minute_slots(samples, end)
    peak = _peak(_values(slots, "hits"), _values(slots, "errors"))
    series = [
        Series("hits", _bars(slots, "hits", peak, "hits")),
        Series("errors", _bars(slots, "errors", peak, "errors")),
    ]
    return Chart("Hits and errors per minute", "hits/min", peak, series, _end_label(end), any(slots))


def run_charts(samples: list[RunSample], end: datetime) -> list[Chart]:
    """The run page's charts: hits, errors and p95 latency per minute over the last hour."""
    slots = minute_slots(samples, end)
    charts = []
    for title, field, unit, css_class in (
        ("Hits per minute", "hits", "hits/min", "hits"),
        ("Errors per minute", "errors", "errors/min", "errors"),
        ("p95 latency per minute", "p95_ms", "ms", "latency"),
    ):
        peak = _peak(_values(slots, field))
        series = [Series(css_class, _bars(slots, field, peak, unit.split("/")[0]))]
        charts.append(Chart(title, unit, peak, series, _end_label(end), any(slots)))
    return charts
