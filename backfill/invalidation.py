"""After a backfill: make Matomo rebuild the reports of the dates it received.

Matomo archives past days once; new raw data for them shows only after their archives
are invalidated and ``core:archive`` runs again (docs/matomo-tracking.md, "After a backfill").
``CoreAdminHome.invalidateArchivedReports`` needs admin access to the site; with a token
that only writes, we tell the user the console commands instead. Either way the result
is recorded on the plan and in its log.
"""

from __future__ import annotations

from collections import defaultdict

from backfill.models import BackfillLog, BackfillPlan
from targets.checks import CheckFailed, MatomoClient
from targets.models import Target


def dates_with_hits(plan: BackfillPlan) -> dict[Target, list[str]]:
    """Per target, the days Matomo accepted hits for (ISO dates, oldest first)."""
    found: dict[Target, list[str]] = defaultdict(list)
    for day in plan.days.filter(hits_accepted__gt=0).select_related("target").order_by("target__name", "day"):
        found[day.target].append(day.day.isoformat())
    return dict(found)


def archive_advice(target: Target) -> str:
    return (
        "Matomo rebuilds these reports the next time core:archive runs (its cron job); to see them now, run "
        f"on the Matomo server: ./console core:archive --url={target.matomo_url}"
    )


def manual_advice(target: Target, dates: list[str]) -> str:
    return (
        "Invalidate them on the Matomo server instead: ./console core:invalidate-report-data "
        f"--dates={dates[0]},{dates[-1]} --sites={target.site_id} and then ./console core:archive "
        f"--url={target.matomo_url}"
    )


def invalidate_reports(plan: BackfillPlan) -> str:
    """Invalidate the reports of every date that received hits; returns the status."""
    found = dates_with_hits(plan)
    if not found:
        plan.record_invalidation(BackfillPlan.Invalidation.NOT_NEEDED, "No hits were accepted: nothing to invalidate.")
        return plan.invalidation
    messages: list[str] = []
    ok = True
    for target, dates in found.items():
        client = MatomoClient(target)
        try:
            client.call_api("CoreAdminHome.invalidateArchivedReports", idSites=target.site_id, dates=",".join(dates))
        except CheckFailed as exc:
            ok = False
            said = str(exc).replace(target.token_auth, "***") if target.token_auth else str(exc)
            text = (
                f"{target.name}: Matomo did not invalidate the reports of {len(dates)} day(s) "
                f"({dates[0]} – {dates[-1]}): {said} {manual_advice(target, dates)}."
            )
            plan.log(BackfillLog.Level.WARNING, text, target=target)
        else:
            text = (
                f"{target.name}: reports of {len(dates)} day(s) ({dates[0]} – {dates[-1]}) invalidated for site "
                f"{target.site_id}. {archive_advice(target)}."
            )
            plan.log(BackfillLog.Level.INFO, text, target=target)
        finally:
            client.session.close()
        messages.append(text)
    status = BackfillPlan.Invalidation.DONE if ok else BackfillPlan.Invalidation.FAILED
    plan.record_invalidation(status, "\n".join(messages))
    return status
