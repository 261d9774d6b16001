"""Prepare a Matomo site for the catalog's traffic, when the user asks: create the goals
the catalog converts, and turn on ecommerce and site search.

Matomo rejects conversions for goals a site does not have, and shows orders and site
searches only when the site's switches are on. Goals are created with
``Goals.addGoal`` (write access) as "manually triggered" goals, which is what a tracking
request with ``idgoal`` is; the switches with ``SitesManager.updateSite`` (admin access).
Matomo picks the new goal ids itself; runs match catalog goals to site goals by name
(``trafficinator.traffic.SiteGoals``), so the ids need not be the catalog's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from targets.checks import ApiError, CheckFailed, CheckResult, MatomoClient, run_check
from targets.models import Target
from trafficinator.traffic import Catalog, SiteGoals


@dataclass
class PrepareResult:
    ok: bool = True
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    check: CheckResult | None = None


def prepare_site(
    target: Target, catalog: Catalog, *, goals: bool = True, ecommerce: bool = True, site_search: bool = True
) -> PrepareResult:
    """Create what is missing (never twice: existing goals are matched by name first)."""
    result = PrepareResult()
    if not target.has_token:
        result.ok = False
        result.problems.append("The target has no token: preparing the site needs a token with write access.")
        return result
    before = run_check(target)
    if not before.ok:
        result.ok = False
        result.problems.append(f"The connection check failed: {before.message}")
        result.check = before
        return result
    client = MatomoClient(target)
    try:
        if goals:
            site_goals = SiteGoals(before.site_goals or {}, catalog)
            for goal in catalog.goals:
                if goal.name not in site_goals.missing(catalog):
                    continue
                params = {
                    "idSite": target.site_id,
                    "name": goal.name,
                    "matchAttribute": "manually",
                    "pattern": "",
                    "patternType": "contains",
                    "caseSensitive": 0,
                    "allowMultipleConversionsPerVisit": 0,
                    "description": "Created by Trafficinator for its catalog's conversions.",
                }
                if goal.revenue is not None:
                    params["revenue"] = str(goal.revenue)
                _attempt(result, f"goal “{goal.name}”", lambda p=params: client.call_api("Goals.addGoal", **p))
        switches = {}
        if ecommerce and not before.site_ecommerce:
            switches["ecommerce"] = 1
        if site_search and not before.site_search:
            switches["siteSearch"] = 1
        if switches:
            label = " and ".join({"ecommerce": "ecommerce", "siteSearch": "site search"}[k] for k in switches)
            _attempt(
                result,
                f"{label} turned on",
                lambda: client.call_api("SitesManager.updateSite", idSite=target.site_id, **switches),
            )
    finally:
        client.session.close()
    result.check = run_check(target)  # store what the site has now
    return result


def _attempt(result: PrepareResult, what: str, call) -> None:
    try:
        answer = call()
    except ApiError as exc:
        result.ok = False
        result.problems.append(f"{what}: Matomo says “{exc}”")
        return
    except CheckFailed as exc:
        result.ok = False
        result.problems.append(f"{what}: {exc}")
        return
    suffix = f" (id {answer})" if isinstance(answer, int | str) and str(answer).isdigit() else ""
    result.done.append(f"{what}{suffix}")
