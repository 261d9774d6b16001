"""Live run pages: the dashboard's runs panel, starting a run, a run's page, and the HTMX
refresh of each panel.

Every panel is one template in templates/runs/partials/ that the full page includes and
its refresh view renders alone. A panel of a finished run is rendered without polling
attributes, so the browser stops asking by itself. Refresh views read a few rows (tests
count the queries): the run, its targets, its last hour of samples or its log; never
anything per hit. What the panels show is computed in runs/presentation.py.
"""

from __future__ import annotations

import json
from collections import defaultdict

from django.conf import settings
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from runs import reports
from runs.forms import StartRunForm
from runs.models import Run, RunLog, RunSample, RunTarget
from runs.presentation import LiveRun, chart_end, chart_minutes, run_charts, samples_since, target_rows
from runs.verification import can_read_live, live_reading_due, reading_time, refresh_live_reading, verify_run
from trafficinator.http import HtmxHttpRequest

RECENT_RUNS = 10
LOG_LIMIT = 200

# --- queries --------------------------------------------------------------------------------


def _with_targets(queryset):
    return queryset.select_related("created_by").prefetch_related(
        Prefetch("run_targets", queryset=RunTarget.objects.select_related("target")), "shards"
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
    minutes = chart_minutes(run, end)
    samples = list(RunSample.objects.filter(run=run, minute__gt=samples_since(end, minutes), minute__lte=end))
    charts = run_charts(samples, end, minutes)
    return {"run": run, "charts": charts, "chart_window": charts[0].window_label}


def matomo_context(run: Run) -> dict:
    """Matomo's live counter as last read (never read here: runs:matomo reads it)."""
    reading_at = reading_time(run)
    can_verify = can_read_live(run)
    due = can_verify and live_reading_due(run)
    return {
        "run": run,
        "verification": run.verification,
        "reading_at": reading_at,
        "reading_age": int((timezone.now() - reading_at).total_seconds()) if reading_at else None,
        "can_verify": can_verify,
        "live_due": due,
        "live_polling": can_verify and (run.is_active or due),
        "live_seconds": settings.MATOMO_LIVE_SECONDS,
    }


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
    context = {"run": run, **matomo_context(run), "first_render": True}
    for panel in (summary_context(run), charts_context(run), targets_context(run), log_context(run, request.GET)):
        context.update(panel)
    return render(request, "runs/detail.html", context)


def _panel(request: HtmxHttpRequest, pk: int, template: str, build) -> HttpResponse:
    run = _run(pk)
    if not request.htmx:
        return redirect(_run_url(run))
    return render(request, template, build(run))


def page_refresh_context(run: Run) -> dict:
    """The status panel with the targets table and the charts, sent out of band: one poll
    so the panels never disagree (they used to poll apart and differ while a run stopped)."""
    return {**summary_context(run), **targets_context(run), **charts_context(run), "refresh_all": True}


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def summary(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _panel(request, pk, "runs/partials/run_summary.html", page_refresh_context)


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def matomo(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Matomo's live counter panel; reads Matomo first when a reading is due (short
    timeout, one reader per run and interval: see runs.verification)."""
    run = get_object_or_404(Run.objects.prefetch_related("run_targets__target"), pk=pk)
    if not request.htmx:
        return redirect(_run_url(run))
    refresh_live_reading(run)
    return render(request, "runs/partials/matomo_live.html", matomo_context(run))


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
            run = Run.objects.create_run(created_by=request.user, enqueue=True, **form.run_options())
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
    return render(request, "runs/partials/run_summary.html", page_refresh_context(run))


# View permission is enough (decided for issue 14): a read of Matomo's counts with the token
# at the target's stored URL, which only users who may change targets can set; the run
# page's live counter makes the same read for every viewer, and nothing changes in Matomo.
@permission_required("runs.view_run", raise_exception=True)
@require_POST
def verify(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Ask Matomo what it recorded for this run (its live counter) and keep the answer."""
    run = _run(pk)
    rows = verify_run(run)
    differing = sum(1 for row in rows if not row.ok)
    level = RunLog.Level.WARNING if differing else RunLog.Level.INFO
    run.log(level, f"Compared with Matomo: {differing} of {len(rows)} target(s) differ from what was sent.")
    return redirect(_run_url(run) + "#verification")


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
    run.resume(by=request.user)
    return _after_action(request, run)


@permission_required("runs.run_traffic", raise_exception=True)
@require_POST
def close(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = _run(pk)
    run.close_lost(by=request.user)
    return _after_action(request, run)


# --- reports and comparison -----------------------------------------------------------------

# Reports are standalone files: inline CSS and SVG only, and the policy says so (nothing can
# be fetched even if a run's text contained markup).
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def report_response(content: str, content_type: str, filename: str, *, download: bool) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    disposition = "attachment" if download else "inline"
    response["Content-Disposition"] = f'{disposition}; filename="{filename}"'
    if content_type.startswith("text/html"):
        response["Content-Security-Policy"] = REPORT_CSP
    return response


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def report(request: HtmxHttpRequest, pk: int, fmt: str) -> HttpResponse:
    """The run's report as JSON, CSV or HTML; ?download=1 saves it as a file."""
    run = _run(pk)
    content, content_type = reports.render(run, fmt)
    return report_response(content, content_type, f"run-{run.pk}.{fmt}", download=bool(request.GET.get("download")))


@permission_required("runs.view_run", raise_exception=True)
@require_GET
def compare(request: HtmxHttpRequest) -> HttpResponse:
    """Two runs side by side: ?a=ID&b=ID (&format=html|json for a file)."""
    a_value, b_value = request.GET.get("a", "").strip(), request.GET.get("b", "").strip()
    context: dict = {"a_value": a_value, "b_value": b_value}
    if a_value or b_value:
        runs = {}
        for label, value in (("A", a_value), ("B", b_value)):
            run = Run.objects.filter(pk=int(value)).first() if value.isdigit() else None
            if run is None:
                context["error"] = f"Run {label}: “{value}” is not a run id." if value else f"Give run {label}."
                return render(request, "runs/compare.html", context, status=400 if value else 200)
            runs[label] = run
        fmt = request.GET.get("format", "")
        filename = f"compare-{runs['A'].pk}-{runs['B'].pk}"
        if fmt == "json":
            comparison = reports.compare(reports.build_report(runs["A"]), reports.build_report(runs["B"]))
            content = json.dumps(comparison, indent=2, ensure_ascii=False, default=str)
            return report_response(content, "application/json", f"{filename}.json", download=True)
        if fmt == "html":
            content = reports.comparison_html(runs["A"], runs["B"])
            return report_response(content, "text/html; charset=utf-8", f"{filename}.html", download=True)
        context.update(reports.comparison_context(runs["A"], runs["B"]))
    return render(request, "runs/compare.html", context)
