"""Live run pages: the dashboard's runs panel, starting a run, a run's page, and the HTMX
refresh of each panel.

Every panel is one template in templates/runs/partials/ that the full page includes and
its refresh view renders alone. A panel of a finished run is rendered without polling
attributes, so the browser stops asking by itself. Refresh views read a few rows (tests
count the queries): the run, its targets, its last hour of samples or its log; never
anything per hit. The figures come from ``Run.stats``, the loader's latest snapshot.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Prefetch
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from runs.forms import StartRunForm
from runs.models import Run, RunLog, RunSample, RunTarget, enqueue_run
from trafficinator.http import HtmxHttpRequest

CHART_MINUTES = 60
RECENT_RUNS = 10
LOG_LIMIT = 200

# --- figures --------------------------------------------------------------------------------


def _number(key: str) -> property:
    return property(lambda self: self.number(key))


class Figures:
    """One telemetry snapshot for templates: ``Run.stats["totals"]`` or one target's entry
    in ``Run.stats["targets"]`` (keys from trafficinator.sending.telemetry). Missing keys read as 0,
    so a run whose loader has not reported yet renders too."""

    visits_started = _number("visits_started")
    visits_finished = _number("visits_finished")
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


# --- queries --------------------------------------------------------------------------------


def _with_targets(queryset):
    return queryset.select_related("created_by").prefetch_related(
        Prefetch("run_targets", queryset=RunTarget.objects.select_related("target"))
    )


def dashboard_context() -> dict:
    """Active runs with their last hour of samples, and the most recent finished runs:
    five queries whatever the number of runs."""
    active = list(_with_targets(Run.objects.active()))
    samples: dict[int, list[RunSample]] = defaultdict(list)
    if active:
        since = samples_since(timezone.now())
        for sample in RunSample.objects.filter(run__in=active, minute__gt=since):
            samples[sample.run_id].append(sample)
    recent = _with_targets(Run.objects.finished().order_by("-finished_at", "-pk"))[:RECENT_RUNS]
    return {
        "active_runs": [LiveRun(run, samples[run.pk]) for run in active],
        "recent_runs": [LiveRun(run) for run in recent],
    }


def summary_context(run: Run) -> dict:
    return {"live": LiveRun(run, with_targets=False)}


def targets_context(run: Run) -> dict:
    return {"run": run, "target_rows": target_rows(run, list(run.run_targets.select_related("target")))}


def charts_context(run: Run) -> dict:
    end = chart_end(run)
    samples = list(RunSample.objects.filter(run=run, minute__gt=samples_since(end), minute__lte=end))
    return {"run": run, "charts": run_charts(samples, end)}


def log_context(run: Run, params) -> dict:
    level = params.get("level", "")
    text = params.get("q", "").strip()
    entries = run.logs.select_related("target").order_by("-created_at", "-pk")
    if level in RunLog.Level.values:
        entries = entries.filter(level=level)
    if text:
        entries = entries.filter(message__icontains=text)
    return {
        "run": run,
        "log_entries": list(entries[:LOG_LIMIT]),
        "log_limit": LOG_LIMIT,
        "log_level": level,
        "log_text": text,
        "log_levels": RunLog.Level.choices,
    }


# --- pages and panels -----------------------------------------------------------------------


def _run(pk: int) -> Run:
    return get_object_or_404(Run, pk=pk)


def _run_url(run: Run) -> str:
    return reverse("runs:detail", args=[run.pk])


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def dashboard_runs(request: HtmxHttpRequest) -> HttpResponse:
    """The dashboard's runs panel; a plain GET gets the whole dashboard."""
    if not request.htmx:
        return redirect("home")
    return render(request, "runs/partials/dashboard_runs.html", dashboard_context())


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = _run(pk)
    context = {"run": run}
    for panel in (summary_context(run), charts_context(run), targets_context(run), log_context(run, request.GET)):
        context.update(panel)
    return render(request, "runs/detail.html", context)


def _panel(request: HtmxHttpRequest, pk: int, template: str, build) -> HttpResponse:
    run = _run(pk)
    if not request.htmx:
        return redirect(_run_url(run))
    return render(request, template, build(run))


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def summary(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _panel(request, pk, "runs/partials/run_summary.html", summary_context)


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def targets(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _panel(request, pk, "runs/partials/run_targets.html", targets_context)


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def charts(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _panel(request, pk, "runs/partials/run_charts.html", charts_context)


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def log(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _panel(request, pk, "runs/partials/run_log.html", lambda run: log_context(run, request.GET))


# --- starting a run -------------------------------------------------------------------------


@permission_required("runs.run_traffic", raise_exception=True)
@require_http_methods(["GET", "POST"])
def start(request: HtmxHttpRequest) -> HttpResponse:
    form = StartRunForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                run = Run.objects.create_run(created_by=request.user, **form.run_options())
                enqueue_run(run)
        except ValidationError as error:
            form.add_model_errors(error)
        else:
            return redirect(_run_url(run))
    return render(request, "runs/start.html", {"start_form": form, "estimate": form.estimate()})


@permission_required("runs.run_traffic", raise_exception=True)
@require_GET
def estimate(request: HtmxHttpRequest) -> HttpResponse:
    form = StartRunForm(request.GET)
    return render(request, "runs/partials/estimate.html", {"estimate": form.estimate()})


# --- stop, resume, close --------------------------------------------------------------------


def _after_action(request: HtmxHttpRequest, run: Run) -> HttpResponse:
    """htmx gets the panel the button lives in, redrawn; a plain form post a redirect."""
    if not request.htmx:
        return redirect(_run_url(run))
    if request.htmx.target == "dashboard-runs":
        return render(request, "runs/partials/dashboard_runs.html", dashboard_context())
    run.refresh_from_db()
    return render(request, "runs/partials/run_summary.html", summary_context(run))


@permission_required("runs.run_traffic", raise_exception=True)
@require_POST
def stop(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = _run(pk)
    run.request_stop(by=request.user)
    return _after_action(request, run)


@permission_required("runs.run_traffic", raise_exception=True)
@require_POST
def resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = _run(pk)
    run.resume()
    return _after_action(request, run)


@permission_required("runs.run_traffic", raise_exception=True)
@require_POST
def close(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = _run(pk)
    run.close_lost(by=request.user)
    return _after_action(request, run)
