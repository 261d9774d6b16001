"""Compare what a live run sent with Matomo's own live counter (Live.getCounters).

The counter covers every visit of the site whose last action falls in the window since
the run started, straight from Matomo's raw log (no archiving needed), so it works
during a run and for two days after it; other traffic on the site adds to it.
"""

from __future__ import annotations

import math

from django.utils import timezone

from runs.models import Run
from targets.readback import LIVE_MAX_MINUTES, Comparison, ReadBackError, judge, live_counters


def verify_run(run: Run) -> list[Comparison]:
    rows = []
    started = run.started_at or run.created_at
    minutes = math.ceil((timezone.now() - started).total_seconds() / 60) + 1
    stats = run.stats if isinstance(run.stats, dict) else {}
    by_target = stats.get("targets", {})
    for run_target in run.run_targets.select_related("target"):
        target = run_target.target
        figures = by_target.get(str(run_target.pk), {})
        sent = int(figures.get("visits_started", 0))
        label = f"last {min(minutes, LIVE_MAX_MINUTES)} min"
        row = Comparison(label, target.name, sent, None, None, None)
        if minutes > LIVE_MAX_MINUTES:
            row.cause = (
                "The run started more than two days ago: Matomo's live counter no longer covers it. Compare the "
                "days' reports in Matomo (Visitors → Overview)."
            )
        else:
            try:
                row.matomo_visits, row.matomo_actions = live_counters(target, minutes)
            except ReadBackError as exc:
                row.cause = str(exc)
            else:
                rejected = int(figures.get("invalid", 0)) + int(figures.get("rejected", 0))
                judge(row, archived_report=False, rejected_hits=rejected)
        rows.append(row)
    run.verification = {"at": timezone.now().isoformat(), "rows": [row.as_dict() for row in rows]}
    run.save(update_fields=["verification"])
    return rows
