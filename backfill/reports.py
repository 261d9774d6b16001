"""Backfill plan reports: the plan and its per-day figures as JSON, the days as CSV.

Read from what the plan stored (its frozen days and their counters); no secrets: targets
appear by name, URL and site id."""

from __future__ import annotations

import csv
import io
from typing import Any

from django.utils import timezone

from backfill.models import BackfillPlan

REPORT_FORMAT = "trafficinator.backfill_report"
REPORT_VERSION = 1
DAY_COLUMNS = [
    "day",
    "target",
    "status",
    "planned_visits",
    "visits_done",
    "hits_sent",
    "hits_accepted",
    "hits_invalid",
    "hits_failed",
    "hits_resent",
]
# What Matomo's day reports said at the last verification (empty: not read, or no such row).
MATOMO_COLUMNS = ["matomo_visits", "matomo_actions", "matomo_note"]


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def build_report(plan: BackfillPlan) -> dict[str, Any]:
    days = list(plan.days.select_related("target").order_by("day", "target__name"))
    rows: list[dict[str, Any]] = [
        {
            "day": day.day.isoformat(),
            "target": day.target.name,
            "status": day.status,
            "planned_visits": day.planned_visits,
            "visits_done": day.visits_done,
            "hits_sent": day.hits_sent,
            "hits_accepted": day.hits_accepted,
            "hits_invalid": day.hits_invalid,
            "hits_failed": day.hits_failed,
            "hits_resent": day.hits_resent,
        }
        for day in days
    ]
    totals = {key: sum(row[key] for row in rows) for key in DAY_COLUMNS[3:]}
    reading = matomo_reading(plan)
    found = {(row["label"], row["target"]): row for row in (reading or {}).get("rows", [])}
    for row in rows:
        compared = found.get((row["day"], row["target"]))
        row["matomo_visits"] = compared["matomo_visits"] if compared else None
        row["matomo_actions"] = compared["matomo_actions"] if compared else None
        row["matomo_note"] = (compared["cause"] or "as sent") if compared else ""
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_at": timezone.now().isoformat(),
        "plan": {
            "id": plan.pk,
            "status": plan.status,
            "end_reason": plan.end_reason,
            "preset": plan.preset_name,
            "start_date": plan.start_date.isoformat(),
            "end_date": plan.end_date.isoformat(),
            "visits_per_day": plan.visits_per_day,
            "daily_cap": plan.daily_cap,
            "total_cap": plan.total_cap,
            "seed": plan.seed,
            "batch_size": plan.batch_size,
            "max_requests_per_second": plan.max_requests_per_second,
            "confirmed_by": plan.confirmed_by_name or None,
            "confirmed_at": _iso(plan.confirmed_at),
            "started_at": _iso(plan.started_at),
            "finished_at": _iso(plan.finished_at),
            "invalidation_message": plan.invalidation_message or None,
            "targets": [
                {"name": target.name, "tracking_url": target.tracking_url, "site_id": target.site_id}
                for target in plan.targets.order_by("name")
            ],
            "profile": plan.profile,
        },
        "estimate": plan.estimate,
        "matomo": reading,
        "totals": totals,
        "days": rows,
    }


def matomo_reading(plan: BackfillPlan) -> dict[str, Any] | None:
    """The last comparison with Matomo's day reports (``manage.py verify backfill:ID`` or
    the plan page's button), or None: ``read_at`` and one row per day and target with the
    visits and actions sent and in Matomo, and the likely cause of a difference."""
    stored = plan.verification if isinstance(plan.verification, dict) else None
    if not stored:
        return None
    return {"source": "VisitsSummary.get", "read_at": stored.get("at"), "rows": list(stored.get("rows", []))}


def report_csv(report: dict[str, Any]) -> str:
    """One row per day and target: planned, sent, accepted, invalid, failed, and what
    Matomo's day report said at the last verification."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DAY_COLUMNS + MATOMO_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report["days"])
    return out.getvalue()


def render(plan: BackfillPlan, fmt: str) -> tuple[str, str]:
    import json

    report = build_report(plan)
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", "application/json"
    if fmt == "csv":
        return report_csv(report), "text/csv; charset=utf-8"
    raise ValueError(f"Backfill reports are json or csv, not “{fmt}”.")
