"""The slice of Matomo's Reporting API (``index.php?module=API``) the project calls.

Messages are Matomo 5's own wording (``core/Access.php``, ``plugins/Login/Login.php``,
``core/API/Proxy.php``, translations in ``lang/en.json``). Access errors answer HTTP 401
like Matomo 5 does for ``NoAccessException``; other API errors answer 200 with
``{"result": "error", ...}``, as Matomo does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .model import Site, Token, group_visits

MSG_AUTH_FAILED_SECURE = "Unable to authenticate with the provided token. It is either invalid or expired."
MSG_AUTH_FAILED_INSECURE = (
    "Unable to authenticate with the provided token. It is either invalid, expired or is required to be sent "
    "as a POST parameter."
)
MSG_SOME_VIEW = "You can't access this resource as it requires view access for at least one website."
MSG_SUPERUSER = "You can't access this resource as it requires a 'superuser' access."

_MODULE_CLASSES = {
    "API": "\\Piwik\\Plugins\\API\\API",
    "SitesManager": "\\Piwik\\Plugins\\SitesManager\\API",
    "UsersManager": "\\Piwik\\Plugins\\UsersManager\\API",
    "CoreAdminHome": "\\Piwik\\Plugins\\CoreAdminHome\\API",
    "VisitsSummary": "\\Piwik\\Plugins\\VisitsSummary\\API",
}


# Matomo's actionDetails "type" per kind of hit (plugins/*/VisitorDetails.php).
_LIVE_ACTION_TYPES = {
    "pageview": "action",
    "event": "event",
    "outlink": "outlink",
    "download": "download",
    "site_search": "search",
    "goal": "goal",
    "ecommerce_order": "ecommerceOrder",
    "ecommerce_cart": "ecommerceAbandonedCart",
}


class ApiError(Exception):
    def __init__(self, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.status = status


def no_access(message: str) -> ApiError:
    return ApiError(message, 401)


def site_access_message(level: str, site_id: int) -> str:
    return f"You can't access this resource as it requires '{level}' access for the website id = {site_id}."


@dataclass
class Caller:
    """Who is calling: the token (None = anonymous) and how it came."""

    token: Token | None
    token_value: str = ""  # the raw value sent, "" when none
    secure: bool = True  # sent in a POST body (or a header)


class ReportingApi:
    """Dispatch ``method`` with request ``params`` for ``caller``; returns JSON-ready data
    or raises ``ApiError``."""

    def __init__(
        self,
        *,
        sites: dict[int, Site],
        tokens: dict[str, Token],
        version: str,
        now: Callable[[], float],
        hits_for: Callable[[int], list],
        on_invalidate: Callable[[dict[str, Any]], None],
    ) -> None:
        self.sites = sites
        self.tokens = tokens
        self.version = version
        self.now = now
        self.hits_for = hits_for
        self.on_invalidate = on_invalidate
        self.methods: dict[str, Callable[[Caller, dict[str, str]], Any]] = {
            "API.getMatomoVersion": self.get_matomo_version,
            "API.getPiwikVersion": self.get_matomo_version,
            "SitesManager.getSiteFromId": self.get_site_from_id,
            "SitesManager.getSitesIdWithAdminAccess": self.get_sites_id_with_admin_access,
            "SitesManager.getSitesIdWithWriteAccess": self.get_sites_id_with_write_access,
            "SitesManager.getSitesIdWithViewAccess": self.get_sites_id_with_view_access,
            "SitesManager.getSitesIdWithAtLeastViewAccess": self.get_sites_id_with_at_least_view_access,
            "SitesManager.getSitesWithAdminAccess": self.get_sites_with_admin_access,
            "SitesManager.getSitesWithViewAccess": self.get_sites_with_view_access,
            "SitesManager.getSitesWithAtLeastViewAccess": self.get_sites_with_at_least_view_access,
            "SitesManager.getAllSitesId": self.get_all_sites_id,
            "SitesManager.getAllSites": self.get_all_sites,
            "UsersManager.hasSuperUserAccess": self.has_super_user_access,
            "UsersManager.getSitesAccessFromUser": self.get_sites_access_from_user,
            "CoreAdminHome.invalidateArchivedReports": self.invalidate_archived_reports,
            "VisitsSummary.get": self.visits_summary_get,
            "Goals.getGoals": self.goals_get_goals,
            "Live.getCounters": self.live_get_counters,
            "Live.getLastVisitsDetails": self.live_get_last_visits_details,
            "Goals.addGoal": self.goals_add_goal,
            "SitesManager.updateSite": self.sites_update_site,
        }

    def call(self, method: str, caller: Caller, params: dict[str, str]) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            module, _, name = method.partition(".")
            if module in _MODULE_CLASSES:
                raise ApiError(
                    f"The method '{name}' does not exist or is not available in the module '{_MODULE_CLASSES[module]}'."
                )
            if not module or not name:
                raise ApiError("Please specify a value for 'method'.")
            raise ApiError(
                f"The plugin {module} is not enabled. You can activate the plugin on Settings > Plugins page in Matomo."
            )
        return handler(caller, params)

    # -- access helpers -------------------------------------------------------------------

    def _ids(self, caller: Caller, predicate: Callable[[Token, int], bool]) -> list[int]:
        token = caller.token
        if token is None:
            return []
        return [site_id for site_id in sorted(self.sites) if predicate(token, site_id)]

    def _require_some_view(self, caller: Caller) -> None:
        if not self._ids(caller, lambda t, s: t.can_view(s)):
            raise no_access(MSG_SOME_VIEW)

    def _require_superuser(self, caller: Caller) -> None:
        if caller.token is None or not caller.token.superuser:
            raise no_access(MSG_SUPERUSER)

    def _require_site(self, caller: Caller, site_id: int, level: str) -> Site:
        token = caller.token
        if token is None:
            allowed = False
        elif level == "view":
            allowed = token.can_view(site_id)
        elif level == "write":
            allowed = token.can_track(site_id)  # write, admin or super user
        else:
            allowed = token.is_admin(site_id)
        if not allowed:
            raise no_access(site_access_message(level, site_id))
        site = self.sites.get(site_id)
        if site is None:  # only a super user gets this far for an unknown site
            raise ApiError(f"An unexpected website was found in the request: website id was set to '{site_id}' .")
        return site

    @staticmethod
    def _param(params: dict[str, str], name: str) -> str:
        value = params.get(name)
        if value is None or value == "":
            raise ApiError(f"Please specify a value for '{name}'.")
        return value

    def _site_id(self, params: dict[str, str]) -> int:
        raw = self._param(params, "idSite")
        try:
            return int(raw)
        except ValueError:
            raise ApiError(f"An unexpected website was found in the request: website id was set to '{raw}' .") from None

    # -- methods --------------------------------------------------------------------------

    def get_matomo_version(self, caller: Caller, params: dict[str, str]) -> Any:
        self._require_some_view(caller)
        return self.version

    def get_site_from_id(self, caller: Caller, params: dict[str, str]) -> Any:
        site = self._require_site(caller, self._site_id(params), "view")
        return site.as_matomo_dict(superuser=bool(caller.token and caller.token.superuser))

    def get_sites_id_with_admin_access(self, caller: Caller, params: dict[str, str]) -> Any:
        # A super user gets every site here (Access::getSitesIdWithAdminAccess).
        return self._ids(caller, lambda t, s: t.is_admin(s))

    def get_sites_id_with_write_access(self, caller: Caller, params: dict[str, str]) -> Any:
        # Write only: admin sites are not listed, and a super user gets [] (Matomo's docblock:
        # "For the superUser it doesn't return any result").
        return self._ids(caller, lambda t, s: not t.superuser and s in t.write and s not in t.admin)

    def get_sites_id_with_view_access(self, caller: Caller, params: dict[str, str]) -> Any:
        return self._ids(caller, lambda t, s: t.access_level(s) == "view" and not t.superuser)

    def get_sites_id_with_at_least_view_access(self, caller: Caller, params: dict[str, str]) -> Any:
        return self._ids(caller, lambda t, s: t.can_view(s))

    def _sites(self, caller: Caller, ids: list[int]) -> list[dict[str, Any]]:
        superuser = bool(caller.token and caller.token.superuser)
        return [self.sites[i].as_matomo_dict(superuser=superuser) for i in ids]

    def get_sites_with_admin_access(self, caller: Caller, params: dict[str, str]) -> Any:
        return self._sites(caller, self.get_sites_id_with_admin_access(caller, params))

    def get_sites_with_view_access(self, caller: Caller, params: dict[str, str]) -> Any:
        return self._sites(caller, self.get_sites_id_with_view_access(caller, params))

    def get_sites_with_at_least_view_access(self, caller: Caller, params: dict[str, str]) -> Any:
        return self._sites(caller, self.get_sites_id_with_at_least_view_access(caller, params))

    def get_all_sites_id(self, caller: Caller, params: dict[str, str]) -> Any:
        self._require_superuser(caller)
        return sorted(self.sites)

    def get_all_sites(self, caller: Caller, params: dict[str, str]) -> Any:
        self._require_superuser(caller)
        return {str(i): self.sites[i].as_matomo_dict(superuser=True) for i in sorted(self.sites)}

    def has_super_user_access(self, caller: Caller, params: dict[str, str]) -> Any:
        # No access check in Matomo: anonymous simply gets false.
        return bool(caller.token and caller.token.superuser)

    def get_sites_access_from_user(self, caller: Caller, params: dict[str, str]) -> Any:
        self._require_superuser(caller)
        login = self._param(params, "userLogin")
        token = next((t for t in self.tokens.values() if t.login == login), None)
        if token is None:
            raise ApiError(f"User '{login}' doesn't exist.")
        return [
            {"site": site_id, "access": token.access_level(site_id)}
            for site_id in sorted(self.sites)
            if token.access_level(site_id)
        ]

    def invalidate_archived_reports(self, caller: Caller, params: dict[str, str]) -> Any:
        raw_sites = params.get("idSites", "")
        if raw_sites == "all":
            site_ids = self._ids(caller, lambda t, s: t.can_view(s))
        else:
            site_ids = sorted({int(part) for part in re.split(r"[,\s]+", raw_sites) if part.strip().isdigit()})
        if not site_ids:
            raise ApiError(
                "Specify a value for &idSites= as a comma separated list of website IDs, for which your token_auth "
                "has 'admin' permission"
            )
        for site_id in site_ids:
            self._require_site(caller, site_id, "admin")
        dates_raw = self._param(params, "dates")
        valid: list[str] = []
        invalid: list[str] = []
        for part in (p.strip() for p in dates_raw.split(",")):
            if not part:
                continue
            try:
                valid.append(date.fromisoformat(part).isoformat())
            except ValueError:
                invalid.append(part)
        call = {
            "site_ids": site_ids,
            "dates": valid,
            "period": params.get("period") or None,
            "segment": params.get("segment") or None,
            "cascade_down": params.get("cascadeDown") in ("1", "true"),
            "login": caller.token.login if caller.token else None,
            "at": self.now(),
        }
        self.on_invalidate(call)
        output = []
        if invalid:
            output.append(
                "Warning: some of the Dates to invalidate were invalid: "
                + ", ".join(invalid)
                + ". Matomo simply ignored those and proceeded with the others."
            )
        if valid:
            output.append("Success. The following dates were invalidated successfully: " + ", ".join(valid))
        return output

    def visits_summary_get(self, caller: Caller, params: dict[str, str]) -> Any:
        """Day metrics computed from what was recorded (a real Matomo needs archiving first).
        Supports period=day with date=YYYY-MM-DD, today or yesterday (site time zone)."""
        site = self._require_site(caller, self._site_id(params), "view")
        period = params.get("period", "day")
        if period != "day":
            raise ApiError("fake_matomo supports VisitsSummary.get with period=day only.")
        raw_date = self._param(params, "date")
        today = datetime.fromtimestamp(self.now(), site.tz).date()
        if raw_date == "today":
            day = today
        elif raw_date == "yesterday":
            day = today - timedelta(days=1)
        else:
            try:
                day = date.fromisoformat(raw_date)
            except ValueError:
                raise ApiError(
                    f"Date format must be: YYYY-MM-DD, or 'today' or 'yesterday' ... got '{raw_date}'"
                ) from None
        visits = [
            v
            for v in group_visits(self.hits_for(site.id), site)
            if datetime.fromtimestamp(v.start, UTC).astimezone(site.tz).date() == day
        ]
        if not visits:
            return []
        actions = [v.matomo_actions for v in visits]
        return {
            "nb_uniq_visitors": len({v.visitor_id for v in visits}),
            "nb_users": len({v.hits[0].params.get("uid") for v in visits if v.hits[0].params.get("uid")}),
            "nb_visits": len(visits),
            "nb_actions": sum(actions),
            "nb_visits_converted": sum(
                1 for v in visits if any(h.action_type in ("goal", "ecommerce_order") for h in v.hits)
            ),
            "bounce_count": sum(1 for v in visits if v.is_bounce),
            "sum_visit_length": int(sum(v.end - v.start for v in visits)),
            "max_actions": max(actions),
        }

    def goals_get_goals(self, caller: Caller, params: dict[str, str]) -> Any:
        """Matomo 5 answers a JSON object keyed by goal id (an empty list for no goals)."""
        site = self._require_site(caller, self._site_id(params), "view")
        goals = {
            str(idgoal): {
                "idsite": site.id,
                "idgoal": idgoal,
                "name": name,
                "description": "",
                "match_attribute": "manually",
                "pattern": "",
                "pattern_type": "contains",
                "case_sensitive": 0,
                "allow_multiple": 0,
                "revenue": 0,
                "deleted": 0,
                "event_value_as_revenue": 0,
            }
            for idgoal, name in sorted(site.goals.items())
        }
        return goals or []

    def goals_add_goal(self, caller: Caller, params: dict[str, str]) -> Any:
        """Needs write access (Matomo: checkUserHasWriteAccess); answers the new goal id."""
        site = self._require_site(caller, self._site_id(params), "write")
        name = self._param(params, "name")
        if params.get("matchAttribute", "manually") not in ("manually", "url", "title", "file", "external_website"):
            raise ApiError("Goals_ExceptionInvalidMatchingString")
        idgoal = max(site.goals, default=0) + 1
        site.goals[idgoal] = name
        return idgoal

    def sites_update_site(self, caller: Caller, params: dict[str, str]) -> Any:
        """Only the switches Trafficinator turns on: ``ecommerce`` and ``siteSearch``."""
        site_id = self._site_id(params)
        site = self._require_site(caller, site_id, "admin")
        ecommerce, sitesearch = site.ecommerce, site.sitesearch
        if params.get("ecommerce") not in (None, ""):
            ecommerce = params["ecommerce"] in ("1", "true")
        if params.get("siteSearch") not in (None, ""):
            sitesearch = params["siteSearch"] in ("1", "true")
        self.sites[site_id] = replace(site, ecommerce=ecommerce, sitesearch=sitesearch)
        return None

    def live_get_last_visits_details(self, caller: Caller, params: dict[str, str]) -> Any:
        """The visit log (raw data, no archiving), most recent visit first, in the shape of
        Matomo 5's ``Live.getLastVisitsDetails`` (plugins/Live/API.php; the action fields
        from plugins/Actions/VisitorDetails.php, ``timestamp`` being the action's UTC
        epoch seconds). Only what the project reads: ``period`` day or range with
        ``date``, a ``segment`` of ``visitorId==...`` (``,`` = or), ``filter_limit``
        (default 10, -1 = all). A visit is in the period when its last action is."""
        site = self._require_site(caller, self._site_id(params), "view")
        period = self._param(params, "period")
        dates = self._param(params, "date").split(",")
        try:
            first, last = date.fromisoformat(dates[0]), date.fromisoformat(dates[-1])
        except ValueError:
            raise ApiError(
                f"Date format must be: YYYY-MM-DD, or 'today' or 'yesterday', not '{params['date']}'"
            ) from None
        if period not in ("day", "range") or (period == "day" and len(dates) != 1):
            raise ApiError("The fake Matomo's Live.getLastVisitsDetails supports period=day|range only.")
        visitors: set[str] | None = None
        segment = params.get("segment", "")
        if segment:
            visitors = set()
            for condition in segment.split(","):
                name, operator, value = condition.partition("==")
                if name != "visitorId" or not operator or not re.fullmatch(r"[0-9a-fA-F]{16}", value):
                    raise ApiError(f"The segment condition '{condition}' is not valid.")
                visitors.add(value.lower())
        try:
            limit = int(params.get("filter_limit") or 10)
        except ValueError:
            raise ApiError("filter_limit must be a number") from None
        visits = [
            v
            for v in group_visits(self.hits_for(site.id), site)
            if (visitors is None or v.visitor_id in visitors) and first <= site.local_date(v.end) <= last
        ]
        visits.sort(key=lambda v: v.end, reverse=True)
        if limit >= 0:
            visits = visits[:limit]
        return [self._visit_details(site, number, visit) for number, visit in enumerate(visits, 1)]

    @staticmethod
    def _visit_details(site: Site, number: int, visit: Any) -> dict[str, Any]:
        actions = [
            {
                "type": _LIVE_ACTION_TYPES.get(hit.action_type, "action"),
                "url": hit.params.get("url", ""),
                "pageTitle": hit.params.get("action_name"),
                "idpageview": hit.pv_id or None,
                "serverTimePretty": datetime.fromtimestamp(hit.time, site.tz).strftime("%b %d, %Y %H:%M:%S"),
                "timestamp": int(hit.time),
            }
            for hit in visit.hits
            if hit.action_type != "ping"
        ]
        return {
            "idSite": site.id,
            "idVisit": number,
            "visitorId": visit.visitor_id,
            "visitorType": "returning" if visit.returning else "new",
            "actions": str(visit.matomo_actions),
            "firstActionTimestamp": int(visit.start),
            "lastActionTimestamp": int(visit.end),
            "serverDate": site.local_date(visit.start).isoformat(),
            "actionDetails": actions,
        }

    def live_get_counters(self, caller: Caller, params: dict[str, str]) -> Any:
        """Visits whose last action is within the last ``lastMinutes`` (raw log, no archiving)."""
        site = self._require_site(caller, self._site_id(params), "view")
        try:
            minutes = int(self._param(params, "lastMinutes"))
        except ValueError:
            raise ApiError("lastMinutes must be a number") from None
        if minutes > 2880:
            raise ApiError("The value for lastMinutes must be lower than 2880.")
        since = self.now() - minutes * 60
        visits = [v for v in group_visits(self.hits_for(site.id), site) if v.end >= since]
        return [
            {
                "visits": len(visits),
                "actions": sum(v.matomo_actions for v in visits),
                "visitors": len({v.visitor_id for v in visits}),
                "visitsConverted": sum(
                    1 for v in visits if any(h.action_type in ("goal", "ecommerce_order") for h in v.hits)
                ),
            }
        ]
