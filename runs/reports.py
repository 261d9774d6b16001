"""Run reports: one JSON document with everything a run recorded, the per-minute CSV, and a
self-contained HTML page; and the comparison of two runs.

Everything here reads what the run stored (``Run.stats``, its samples, its log); nothing is
measured again. Secrets never appear: targets are described by name, URL and site id, and
the preset snapshot holds no token.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone

from runs.models import Run, RunSample, RunTarget
from trafficinator.sending.telemetry import OUTCOMES, LatencyHistogram, RunTotals, TargetStats
from trafficinator.thresholds import METRICS, Figures, Measure, answered_hits

REPORT_FORMAT = "trafficinator.run_report"
REPORT_VERSION = 1
FORMATS = ("json", "csv", "html")
# Figures shown side by side in comparisons and at the top of the HTML report.
KEY_FIGURES = [
    "visits",
    "hits",
    "accepted",
    "success_rate",
    "errors_rate",
    "rejected",
    "invalid",
    "delivered_rate",
    "hits_per_second",
    "p50_ms",
    "p95_ms",
    "p99_ms",
]
# Settings compared between runs (from the run itself; the preset knobs are added after).
RUN_SETTINGS = [
    *("preset", "visits_per_day", "duration_seconds", "max_visits", "daily_cap", "bulk", "batch_size", "seed"),
    "abort_on_fail",
]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def derived_figures(data: Figures, measure) -> dict[str, float | None]:
    """The metrics thresholds use (rates, latencies, counts) for one scope, rounded."""
    figures = {}
    for name in KEY_FIGURES:
        value = METRICS[name].read(data, measure)
        figures[name] = None if value is None else round(value, 6)
    return figures


def latency_histogram(data: TargetStats | RunTotals) -> list[dict[str, float]]:
    """Non-empty latency buckets, fastest first: {"from_ms", "to_ms", "count"}."""
    buckets = data.get("latency_buckets", {})
    rows = []
    for index in sorted(int(key) for key in buckets):
        low, high = LatencyHistogram.bucket_bounds(index)
        rows.append({"from_ms": round(low * 1000, 3), "to_ms": round(high * 1000, 3), "count": buckets[str(index)]})
    return rows


def _outcomes(data: TargetStats | RunTotals) -> dict[str, int]:
    outcomes: dict[str, int] = {kind: data.get(kind, 0) for kind in OUTCOMES}
    outcomes["in_flight"] = data.get("in_flight", 0)
    outcomes["unsent"] = data.get("unsent", 0)
    return outcomes


def _scope_report(data: TargetStats | RunTotals, measure: Measure) -> dict[str, Any]:
    return {
        "figures": derived_figures(data, measure),
        "outcomes": _outcomes(data),
        "answered": answered_hits(data),
        "sent": data.get("sent", 0),
        "requests": data.get("requests", 0),
        "retries": data.get("retries", 0),
        "visits_started": data.get("visits_started", 0),
        "visits_finished": data.get("visits_finished", 0),
        "status_codes": {
            "rejected": data.get("rejected_by_status", {}),
            "server_errors": data.get("server_errors_by_status", {}),
        },
        "retries_by_reason": data.get("retries_by_reason", {}),
        "latency_ms": data.get("latency_ms", {}),
        "latency_histogram": latency_histogram(data),
    }


def _target_settings(rt: RunTarget, run: Run, siblings: list[RunTarget]) -> dict[str, Any]:
    target = rt.target
    return {
        "name": target.name,
        "tracking_url": target.tracking_url,
        "site_id": target.site_id,
        "has_token": target.has_token,
        "weight": rt.weight,
        "visits_per_day": rt.share_of(run, siblings),
        "explicit_visits_per_day": rt.visits_per_day,
    }


def run_settings(run: Run, siblings: list[RunTarget]) -> dict[str, Any]:
    """What was asked for: the run's options, its targets (no token) and the preset knobs."""
    return {
        "preset": run.preset_name,
        "visits_per_day": run.visits_per_day,
        "duration_seconds": run.duration_seconds,
        "max_visits": run.max_visits,
        "daily_cap": run.daily_cap,
        "bulk": run.bulk,
        "batch_size": run.batch_size,
        "seed": run.seed,
        "thresholds": list(run.thresholds or []),
        "abort_on_fail": run.abort_on_fail,
        "targets": [_target_settings(rt, run, siblings) for rt in siblings],
        "profile": run.profile,
    }


def _sample_rows(samples: list[RunSample], names: dict[str, str], started: datetime | None) -> list[dict]:
    rows = []
    for sample in samples:
        rows.append(
            {
                "minute": sample.minute.isoformat(),
                "seconds_since_start": _since(sample.minute, started),
                "hits": sample.hits,
                "accepted": sample.accepted,
                "errors": sample.errors,
                "p95_ms": sample.p95_ms,
                "targets": {names.get(key, key): values for key, values in (sample.targets or {}).items()},
            }
        )
    return rows


def _since(moment: datetime, started: datetime | None) -> int | None:
    if started is None:
        return None
    # A sample's minute starts before the run did for its first minute: clamp to 0.
    return max(0, int((moment - started.replace(second=0, microsecond=0)).total_seconds()))


def build_report(run: Run) -> dict[str, Any]:
    """Everything the run recorded, JSON-ready (README "Reports" describes the keys)."""
    siblings = sorted(run.run_targets.select_related("target"), key=lambda rt: rt.target.name)
    names = {str(rt.pk): rt.target.name for rt in siblings}
    run_scope, target_scopes = run.threshold_scopes()
    measures = {scope.name: scope.measure for scope in target_scopes}
    per_target = run.stats_snapshot["targets"]
    elapsed = run.elapsed()
    samples = list(run.samples.order_by("minute"))
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_at": timezone.now().isoformat(),
        "run": {
            "id": run.pk,
            "status": run.status,
            "outcome": run.outcome or None,
            "end_reason": run.end_reason,
            "created_by": getattr(run.created_by, "username", None),
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "elapsed_seconds": round(elapsed.total_seconds(), 3) if elapsed else None,
        },
        "settings": run_settings(run, siblings),
        "totals": _scope_report(run.totals, run_scope.measure),
        "targets": [
            {"name": rt.target.name, **_scope_report(per_target.get(str(rt.pk), {}), measures[rt.target.name])}
            for rt in siblings
        ],
        "thresholds": {
            "outcome": run.outcome or None,
            "stopped_early": run.stopped_by_thresholds,
            "results": list(run.threshold_results or []),
        },
        "matomo": matomo_reading(run),
        "samples": _sample_rows(samples, names, run.started_at),
        "log": [
            {
                "time": entry.created_at.isoformat(),
                "level": entry.level,
                "target": entry.target.name if entry.target else None,
                "message": entry.message,
            }
            for entry in run.logs.select_related("target").order_by("created_at", "pk")
        ],
    }


def matomo_reading(run: Run) -> dict[str, Any] | None:
    """Matomo's own live counter as last read for the run (runs.verification), or None:
    ``read_at``, ``running`` (read while the run was sending: not judged), and per target
    visits sent, Matomo's visits and actions and the likely cause of a difference (or why
    Matomo could not be read)."""
    stored = run.verification if isinstance(run.verification, dict) else None
    if not stored:
        return None
    return {
        "source": "Live.getCounters",
        "read_at": stored.get("at"),
        "running": bool(stored.get("running", False)),
        "rows": [dict(row) for row in stored.get("rows", [])],
    }


CSV_COLUMNS = ["minute", "seconds_since_start", "target", "hits", "accepted", "errors", "p95_ms"]
# Matomo's live counter as last read: one extra row per target at the time of the reading.
CSV_MATOMO_COLUMNS = ["visits_sent", "matomo_visits", "matomo_actions", "matomo_note"]


def report_csv(report: dict[str, Any]) -> str:
    """The per-minute series, one row per minute and target (target "*": all targets),
    then Matomo's live counter as last read, one row per target (the ``matomo_*`` columns,
    empty on the per-minute rows)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS + CSV_MATOMO_COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    for sample in report["samples"]:
        base = {"minute": sample["minute"], "seconds_since_start": sample["seconds_since_start"]}
        writer.writerow({**base, "target": "*", **{k: sample[k] for k in ("hits", "accepted", "errors", "p95_ms")}})
        for name, values in sorted(sample["targets"].items()):
            writer.writerow(
                {**base, "target": name, **{k: values.get(k) for k in ("hits", "accepted", "errors", "p95_ms")}}
            )
    reading = report.get("matomo")
    if reading:
        read_at = reading["read_at"]
        started = report["run"]["started_at"]
        since = _since(datetime.fromisoformat(read_at), datetime.fromisoformat(started)) if started else None
        for row in reading["rows"]:
            note = row["cause"] or ("still sending" if reading["running"] else "as sent")
            writer.writerow(
                {
                    "minute": read_at,
                    "seconds_since_start": since,
                    "target": row["target"],
                    "visits_sent": row["sent_visits"],
                    "matomo_visits": row["matomo_visits"],
                    "matomo_actions": row["matomo_actions"],
                    "matomo_note": note,
                }
            )
    return out.getvalue()


# --- charts: inline SVG line charts over time since start ---------------------------------------

CHART_WIDTH = 640
CHART_HEIGHT = 160
MARGIN_LEFT = 56
MARGIN_BOTTOM = 22


@dataclass
class Line:
    label: str
    css_class: str
    points: str  # "x,y x,y ..." for <polyline>
    dots: list[tuple[float, float, str]] = field(default_factory=list)  # (x, y, title) for one-point lines


@dataclass
class LineChart:
    title: str
    unit: str
    lines: list[Line]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    left: int = MARGIN_LEFT
    bottom: int = MARGIN_BOTTOM

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom

    @property
    def has_data(self) -> bool:
        return any(line.points or line.dots for line in self.lines)


def _minutes_label(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:g} min" if minutes < 120 else f"{minutes / 60:g} h"


def line_chart(title: str, unit: str, series: list[tuple[str, str, list[tuple[float, float]]]]) -> LineChart:
    """``series``: (label, css class, [(seconds since start, value)]) drawn on one shared
    time axis, so runs of different dates overlay."""
    all_points = [point for _, _, points in series for point in points]
    max_x = max((x for x, _ in all_points), default=0) or 60
    max_y = max((y for _, y in all_points), default=0) or 1
    plot_width = CHART_WIDTH - MARGIN_LEFT - 8
    plot_height = CHART_HEIGHT - MARGIN_BOTTOM - 8

    def position(x: float, y: float) -> tuple[float, float]:
        return (
            round(MARGIN_LEFT + x / max_x * plot_width, 1),
            round(CHART_HEIGHT - MARGIN_BOTTOM - y / max_y * plot_height, 1),
        )

    lines = []
    for label, css_class, points in series:
        placed = [position(x, y) for x, y in sorted(points)]
        if len(placed) == 1:
            x, y = placed[0]
            lines.append(Line(label, css_class, "", [(x, y, f"{label}: {points[0][1]:g} {unit}")]))
        else:
            lines.append(Line(label, css_class, " ".join(f"{x},{y}" for x, y in placed)))
    y_ticks = [(position(0, max_y * share)[1], f"{max_y * share:,.4g}") for share in (0, 0.5, 1)]
    x_ticks = [(position(max_x * share, 0)[0], _minutes_label(max_x * share)) for share in (0, 0.5, 1)]
    return LineChart(title, unit, lines, y_ticks, x_ticks)


def _series(report: dict, key: str) -> list[tuple[float, float]]:
    return [
        (sample["seconds_since_start"] or 0, sample[key]) for sample in report["samples"] if sample.get(key) is not None
    ]


def report_charts(reports: list[tuple[str, str, dict]]) -> list[LineChart]:
    """Hits, errors and p95 per minute; one line per (label, css class, report)."""
    charts = []
    for title, key, unit in (
        ("Hits per minute", "hits", "hits/min"),
        ("Errors per minute", "errors", "errors/min"),
        ("p95 latency per minute", "p95_ms", "ms"),
    ):
        charts.append(line_chart(title, unit, [(label, css, _series(report, key)) for label, css, report in reports]))
    return charts


def report_html(report: dict[str, Any]) -> str:
    """One self-contained page: inline CSS and SVG, no script, no external asset."""
    return render_to_string(
        "runs/report.html",
        {
            "report": report,
            "charts": report_charts([(f"Run {report['run']['id']}", "run-a", report)]),
            "figure_names": KEY_FIGURES,
            "latency_rows": report["totals"]["latency_histogram"],
            "latency_peak": max((row["count"] for row in report["totals"]["latency_histogram"]), default=0),
        },
    )


def render(run: Run, fmt: str) -> tuple[str, str]:
    """(content, content type) of ``run``'s report in ``fmt`` (json, csv or html)."""
    import json

    report = build_report(run)
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n", "application/json"
    if fmt == "csv":
        return report_csv(report), "text/csv; charset=utf-8"
    if fmt == "html":
        return report_html(report), "text/html; charset=utf-8"
    raise ValueError(f"Unknown report format “{fmt}”; use one of {', '.join(FORMATS)}.")


# --- comparing two runs -------------------------------------------------------------------------


@dataclass
class SettingRow:
    name: str
    a: Any
    b: Any

    @property
    def differs(self) -> bool:
        return self.a != self.b


@dataclass
class FigureRow:
    name: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else round(self.b - self.a, 6)

    @property
    def percent(self) -> float | None:
        if self.delta is None or not self.a:
            return None
        return round(self.delta / abs(self.a) * 100, 2)


def _flat_settings(report: dict) -> dict[str, Any]:
    settings = report["settings"]
    flat = {name: settings[name] for name in RUN_SETTINGS}
    flat["thresholds"] = "; ".join(settings["thresholds"])
    flat["targets"] = ", ".join(
        f"{t['name']} ({t['visits_per_day']}/day, site {t['site_id']})" for t in settings["targets"]
    )
    for knob, value in sorted((settings.get("profile") or {}).items()):
        flat[f"preset.{knob}"] = value
    return flat


def compare(report_a: dict, report_b: dict) -> dict[str, Any]:
    """Settings side by side (with a flag where they differ) and key figures with their
    delta (B - A) and percent change; JSON-ready."""
    settings_a, settings_b = _flat_settings(report_a), _flat_settings(report_b)
    settings = [SettingRow(name, settings_a.get(name), settings_b.get(name)) for name in settings_a | settings_b]
    figures = [
        FigureRow(name, report_a["totals"]["figures"].get(name), report_b["totals"]["figures"].get(name))
        for name in KEY_FIGURES
    ]
    return {
        "format": "trafficinator.run_comparison",
        "version": REPORT_VERSION,
        "a": report_a["run"],
        "b": report_b["run"],
        "settings": [{"name": s.name, "a": s.a, "b": s.b, "differs": s.differs} for s in settings],
        "figures": [
            {"name": f.name, "a": f.a, "b": f.b, "delta": f.delta, "percent_change": f.percent} for f in figures
        ],
        "outcomes": {"a": report_a["run"]["outcome"], "b": report_b["run"]["outcome"]},
    }


def comparison_context(run_a: Run, run_b: Run) -> dict[str, Any]:
    report_a, report_b = build_report(run_a), build_report(run_b)
    comparison = compare(report_a, report_b)
    return {
        "run_a": run_a,
        "run_b": run_b,
        "comparison": comparison,
        "charts": report_charts([(f"Run {run_a.pk}", "run-a", report_a), (f"Run {run_b.pk}", "run-b", report_b)]),
    }


def comparison_html(run_a: Run, run_b: Run) -> str:
    return render_to_string("runs/compare_report.html", comparison_context(run_a, run_b))
