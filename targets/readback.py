"""Read back from Matomo what it recorded, and compare it with what we sent.

Matomo's reports are the judge of fidelity: a hit it answered "OK" may still have been
excluded, merged into another visit or split. With a token, ``VisitsSummary.get`` gives a
site-day's visits and actions (after archiving; past days need it), and
``Live.getCounters`` the visits of the last minutes straight from the raw log (no
archiving). ``Comparison`` rows flag every difference with its likely cause.

Matomo's actions (``visit_total_actions``, plugins/Actions/Columns/VisitTotalActions.php)
are page views, downloads, outlinks, site searches and events; pings, goal conversions,
ecommerce and content impressions or interactions are not actions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from targets.checks import ApiError, CheckFailed, MatomoClient, count_or_none
from targets.models import Target
from trafficinator.traffic import Visit

MATOMO_ACTION_KINDS = frozenset({"pageview", "search", "outlink", "download", "event"})
LIVE_MAX_MINUTES = 2880  # Live.getCounters refuses longer windows


def matomo_actions(visit: Visit) -> int:
    """The actions Matomo will count for a visit we send."""
    return sum(1 for hit in visit.hits if hit.kind in MATOMO_ACTION_KINDS)


def sent_counts(visits: Iterable[Visit]) -> tuple[int, int]:
    count = actions = 0
    for visit in visits:
        count += 1
        actions += matomo_actions(visit)
    return count, actions


@dataclass
class Comparison:
    label: str  # a day, or "last N minutes"
    target: str
    sent_visits: int
    sent_actions: int | None
    matomo_visits: int | None  # None: Matomo has no report (not archived) or could not be asked
    matomo_actions: int | None
    cause: str = ""  # empty when Matomo recorded what was sent

    @property
    def ok(self) -> bool:
        return not self.cause

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "target": self.target,
            "sent_visits": self.sent_visits,
            "sent_actions": self.sent_actions,
            "matomo_visits": self.matomo_visits,
            "matomo_actions": self.matomo_actions,
            "cause": self.cause,
        }


class ReadBackError(Exception):
    """Matomo could not be asked (no token, network, API error); the message says why."""


def _client(target: Target, timeout: float | None = None) -> MatomoClient:
    if not target.has_token:
        raise ReadBackError(f"Target {target.name} has no token: Matomo's reports can only be read with one.")
    return MatomoClient(target) if timeout is None else MatomoClient(target, timeout=timeout)


def day_summary(target: Target, day: date) -> tuple[int, int] | None:
    """(visits, actions) of a site-day from VisitsSummary.get; None when Matomo has no
    report for it yet (the day was not archived)."""
    client = _client(target)
    try:
        data = client.call_api("VisitsSummary.get", idSite=target.site_id, period="day", date=day.isoformat())
    except (ApiError, CheckFailed) as exc:
        raise ReadBackError(f"Matomo's VisitsSummary.get for {target.name} on {day} failed: {exc}") from None
    finally:
        client.session.close()
    if not isinstance(data, dict) or "nb_visits" not in data:
        return None
    return _counts(data, "nb_visits", "nb_actions", f"Matomo's VisitsSummary.get for {target.name} on {day}")


def live_counters(target: Target, minutes: int, *, timeout: float | None = None) -> tuple[int, int]:
    """(visits, actions) Matomo's raw log has for the last ``minutes`` (Live.getCounters);
    ``timeout`` (seconds) bounds the wait, by default a connection check's."""
    client = _client(target, timeout)
    minutes = max(1, min(LIVE_MAX_MINUTES, minutes))
    try:
        data = client.call_api("Live.getCounters", idSite=target.site_id, lastMinutes=minutes)
    except (ApiError, CheckFailed) as exc:
        raise ReadBackError(f"Matomo's Live.getCounters for {target.name} failed: {exc}") from None
    finally:
        client.session.close()
    row = data[0] if isinstance(data, list) and data else data if isinstance(data, dict) else None
    return _counts(row, "visits", "actions", f"Matomo's Live.getCounters for {target.name}")


def _counts(row: Any, visits: str, actions: str, what: str) -> tuple[int, int]:
    """Two counts of an answer's row (a missing or empty one is 0); anything that is not
    a count (text, a fraction, a negative or absurd number) is a ReadBackError."""
    found = [count_or_none(row.get(key) or 0) for key in (visits, actions)] if isinstance(row, dict) else [None]
    if None in found:
        raise ReadBackError(f"{what} answered something unexpected: {_excerpt(row)}")
    return found[0] or 0, found[1] or 0


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def judge(
    row: Comparison, *, archived_report: bool, other_traffic_possible: bool = True, rejected_hits: int = 0
) -> Comparison:
    """Fill in ``cause``: why Matomo's figures differ from what was sent (or "")."""
    if row.matomo_visits is None:
        row.cause = (
            "No report from Matomo for this day: it has not been archived since the hits arrived. Run "
            "`./console core:archive` (the backfill invalidated the dates when its token allowed) and verify again."
            if archived_report
            else "Matomo could not be asked."
        )
        return row
    fewer = row.matomo_visits < row.sent_visits
    more = row.matomo_visits > row.sent_visits
    if fewer:
        causes = []
        if rejected_hits:
            causes.append(f"{rejected_hits:,} hits were rejected or invalid (see the counts)")
        causes.append("visits merged into others (a shared visitor id, or a user id matched by fingerprint)")
        causes.append("hits excluded by the site's settings (excluded IPs, user agents or parameters)")
        if archived_report:
            causes.append("a report archived before every hit had arrived (archive again)")
        row.cause = f"Matomo has {row.sent_visits - row.matomo_visits:,} visits fewer: " + "; or ".join(causes) + "."
    elif more:
        row.cause = (
            f"Matomo has {row.matomo_visits - row.sent_visits:,} visits more: "
            + ("other traffic on the site in the same period, or " if other_traffic_possible else "")
            + "visits split in two (crossing the site's midnight, or 30 minutes without a hit)."
        )
    elif row.sent_actions is not None and row.matomo_actions is not None and row.matomo_actions != row.sent_actions:
        row.cause = (
            f"Same visits, but Matomo has {row.matomo_actions:,} actions where {row.sent_actions:,} were sent: "
            "actions excluded or rejected, or moved between visits."
        )
    return row
