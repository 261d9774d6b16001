"""Compare what a live run sent with Matomo's own live counter (Live.getCounters).

The counter covers every visit of the site whose last action falls in the window since
the run started, straight from Matomo's raw log (no archiving needed), so it works
during a run and for two days after it; other traffic on the site adds to it.

While a run is active its page reads the counter by itself (``refresh_live_reading``):
at most once per ``MATOMO_LIVE_SECONDS`` whatever the number of open pages (a lock in the
shared cache), with a short timeout, from the panel's own poll, so neither the page nor
the status panel ever waits for Matomo. The last answer is kept on the run with its time
(``Run.verification``), errors included, and reports carry it.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from runs.models import Run
from targets.readback import LIVE_MAX_MINUTES, Comparison, ReadBackError, judge, live_counters

# A page's own read of the live counter gives up after this long per target (the
# "Compare with Matomo" button and `manage.py verify` wait as long as a connection check).
LIVE_READ_TIMEOUT_SECONDS = 4.0


def verify_run(run: Run, *, timeout: float | None = None) -> list[Comparison]:
    """Read Matomo's live counter for each target of ``run`` and keep the answer on it.

    While the run is sending, a difference is expected (hits in flight, visits still
    open), so rows are judged only once it has finished; a row that could not be read
    says why either way."""
    rows = []
    started = run.started_at or run.created_at
    minutes = math.ceil((timezone.now() - started).total_seconds() / 60) + 1
    by_target = run.stats_snapshot["targets"]
    running = run.is_active
    for run_target in run.run_targets.select_related("target"):
        target = run_target.target
        figures = by_target.get(str(run_target.pk), {})
        sent = figures.get("visits_started", 0)
        label = f"last {min(minutes, LIVE_MAX_MINUTES)} min"
        row = Comparison(label, target.name, sent, None, None, None)
        if minutes > LIVE_MAX_MINUTES:
            row.cause = (
                "The run started more than two days ago: Matomo's live counter no longer covers it. Compare the "
                "days' reports in Matomo (Visitors → Overview)."
            )
        else:
            try:
                row.matomo_visits, row.matomo_actions = live_counters(target, minutes, timeout=timeout)
            except ReadBackError as exc:
                row.cause = str(exc)
            else:
                if not running:
                    rejected = int(figures.get("invalid", 0)) + int(figures.get("rejected", 0))
                    judge(row, archived_report=False, rejected_hits=rejected)
        rows.append(row)
    run.verification = {
        "at": timezone.now().isoformat(),
        "running": running,
        "rows": [row.as_dict() for row in rows],
    }
    run.save(update_fields=["verification"])
    return rows


def reading_time(run: Run) -> datetime | None:
    """When Matomo's counter was last read for ``run`` (None: never)."""
    value = (run.verification or {}).get("at") if isinstance(run.verification, dict) else None
    return parse_datetime(value) if isinstance(value, str) else None


def can_read_live(run: Run) -> bool:
    """Whether Matomo's counter can be read for the run: a target with a token."""
    return any(rt.target.has_token for rt in run.run_targets.all())


def live_reading_due(run: Run, now: datetime | None = None) -> bool:
    """Whether the page should read Matomo's counter now: while the run is active, once
    per MATOMO_LIVE_SECONDS; after it finished, once more (the final, judged figures)
    unless that was more than two days later than the counter can look back."""
    if run.started_at is None or not can_read_live(run):
        return False
    now = now or timezone.now()
    last = reading_time(run)
    if run.is_active:
        return last is None or now - last >= timedelta(seconds=settings.MATOMO_LIVE_SECONDS - 1)
    if run.finished_at is None or now - run.started_at > timedelta(minutes=LIVE_MAX_MINUTES - 2):
        return False
    # A reading taken while the run was still sending (even one that ended after it) is not final.
    return last is None or last < run.finished_at or bool((run.verification or {}).get("running"))


def refresh_live_reading(run: Run) -> bool:
    """Read Matomo's counter for ``run`` if it is due and no other request is reading it;
    True when it was read. Never raises for Matomo's failures: they are stored."""
    if not live_reading_due(run):
        return False
    # One reader per run and interval across every web process (the cache is shared); the
    # final read after the run ended has its own key, so a reading just before cannot hold it.
    phase = "live" if run.is_active else "final"
    key = f"runs:matomo-live:{run.pk}:{run.created_at.timestamp()}:{phase}"
    if not cache.add(key, True, timeout=max(1, settings.MATOMO_LIVE_SECONDS - 1)):
        return False
    verify_run(run, timeout=LIVE_READ_TIMEOUT_SECONDS)
    return True
