"""What a plan will send, before anything is sent: guardrails, per-day visits, estimate.

The traffic model decides the visits; this module turns a plan's settings into its
inputs (profile, catalog, funnels, time zones) and into the numbers the user confirms.

Hits are estimated from a generated sample: the first visits of the plan's first day,
generated with the plan's own seed (the same code that sends them), so the hits per visit
reflect the preset's page views, events, funnels and bounces exactly, not a formula.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.db.models import Sum

from backfill.models import MAX_TOTAL_VISITS, MAX_WINDOW_DAYS, BackfillDay, BackfillPlan
from funnels.models import Funnel
from targets.models import Target
from trafficinator.traffic import (
    Catalog,
    CatalogError,
    FunnelSpec,
    FunnelStep,
    Population,
    Profile,
    SiteGoals,
    TrafficConfigError,
    day_visits,
    local_day_bounds,
    visits_for_day_count,
)

SAMPLE_VISITS = 400
# A bulk request carries a quarter of a batch (the checkpoint unit), at least
# MIN_PART_HITS hits (see backfill.runner and request_hits()).
REQUESTS_PER_BATCH = 4
MIN_PART_HITS = 100
# Matomo refuses dates before the first website went online (Piwik\Date::FIRST_WEBSITE_TIMESTAMP).
FIRST_WEBSITE_DAY = date(1991, 8, 6)


def request_hits(batch_size: int) -> int:
    """Hits per bulk request for a plan's batch size: a quarter of it, at least
    MIN_PART_HITS, never more than the batch (whole visits, so a long visit may exceed it)."""
    return min(batch_size, max(MIN_PART_HITS, batch_size // REQUESTS_PER_BATCH))


# Without a rate limit or a measured speed: what a small Matomo ingests in bulk
# (docs/matomo-tracking.md, "How fast a real Matomo ingests"). Always labelled as an assumption.
ASSUMED_HITS_PER_SECOND = 800.0


# --- the traffic model's inputs ---------------------------------------------------------


def plan_profile(plan: BackfillPlan) -> Profile:
    return plan.snapshot.profile(visits_per_day=plan.visits_per_day)


def plan_goals(plan: BackfillPlan, target: Target | None, catalog: Catalog) -> SiteGoals | None:
    """The conversions a target's site accepts (None: no target, nothing filtered): the
    site's goals as they were at confirmation; a draft reads the target's current ones."""
    if target is None:
        return None
    frozen = (plan.frozen_goals or {}).get(str(target.pk))
    if frozen is not None:
        return SiteGoals({int(idgoal): str(name) for idgoal, name in frozen.items()}, catalog)
    return target.site_goals_for(catalog)


def goals_to_json(target: Target) -> dict[str, str]:
    """A target's known site goals as JSON (unknown goals count as none, as in site_goals_for)."""
    return {str(idgoal): name for idgoal, name in sorted((target.goal_map() or {}).items())}


def plan_population(plan: BackfillPlan, lane: int) -> Population:
    """The lane's visitors (a live run of the same target and preset continues lane 0's)."""
    return plan.population(lane)


def plan_funnels(plan: BackfillPlan) -> list[FunnelSpec]:
    """The funnels a plan's visits follow: frozen at confirmation (so a resumed day
    replays exactly the confirmed stream whatever was edited since); a draft reads the
    preset's current funnels."""
    if plan.frozen_funnels is not None:
        return funnels_from_json(plan.frozen_funnels)
    if plan.preset is None:
        return []
    return Funnel.objects.specs_for_preset(plan.preset)


def funnels_to_json(specs: list[FunnelSpec]) -> list[dict]:
    """Traffic-model funnel specs as JSON, exactly (money stays Decimal, see _freeze)."""
    return [
        {
            "name": spec.name,
            "share": spec.share,
            "priority": spec.priority,
            "steps": [
                {
                    "kind": step.kind,
                    "params": _freeze(dict(step.params)),
                    "delay_min": step.delay_min,
                    "delay_max": step.delay_max,
                    "continue_probability": step.continue_probability,
                }
                for step in spec.steps
            ],
        }
        for spec in specs
    ]


def funnels_from_json(data: list[dict]) -> list[FunnelSpec]:
    return [
        FunnelSpec(
            name=entry["name"],
            share=entry["share"],
            priority=entry["priority"],
            steps=tuple(
                FunnelStep(
                    step["kind"],
                    _thaw(step["params"]),
                    delay_min=step["delay_min"],
                    delay_max=step["delay_max"],
                    continue_probability=step["continue_probability"],
                )
                for step in entry["steps"]
            ),
        )
        for entry in data
    ]


def _freeze(value):
    """JSON has no Decimal: money values become {"decimal": "12.50"} (exact)."""
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, dict):
        return {key: _freeze(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_freeze(item) for item in value]
    return value


def _thaw(value):
    if isinstance(value, dict):
        if set(value) == {"decimal"} and isinstance(value["decimal"], str):
            return Decimal(value["decimal"])
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thaw(item) for item in value]
    return value


def target_timezone(target: Target, plan: BackfillPlan) -> str:
    return target.effective_timezone(plan.snapshot.timezone)


def site_today(timezone_name: str, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone_name)).date()


def last_days_window(days: int, targets: list[Target], preset_timezone: str, today: date | None = None):
    """ "The last N days": the N fully past days ending yesterday in the sites' time zone
    (the earliest "today" when targets sit in different zones)."""
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise ValidationError({"last_days": f"Enter 1 to {MAX_WINDOW_DAYS} days."})
    if today is None:
        zones = [target.effective_timezone(preset_timezone) for target in targets] or [preset_timezone]
        today = min(site_today(zone) for zone in zones)
    end = today - timedelta(days=1)
    return end - timedelta(days=days - 1), end


# --- guardrails ---------------------------------------------------------------------------


def target_problem(target: Target) -> str:
    """Why a target cannot take a backfill, or ""."""
    if not target.enabled:
        return f"Target {target.name} is disabled. Enable it first."
    if not target.has_token:
        return (
            f"Target {target.name} has no token. Hits dated more than 24 h ago need a token_auth with write "
            "access: add one and run the connection check."
        )
    if target.last_check_ok is not True:
        state = "has never been checked" if target.last_check_ok is None else "failed its last connection check"
        return (
            f"Target {target.name} {state}. Run the check (admin, or manage.py target check {target.name}) "
            "so the token and the site's time zone are verified."
        )
    if target.token_can_write is not True:
        return (
            f"The token of target {target.name} cannot write to site {target.site_id}. Backfill (dates older than "
            "24 h) needs a token of a user with write or admin access, or a super user."
        )
    return ""


def check_plan(plan: BackfillPlan, targets: list[Target], *, today: date | None = None) -> None:
    """Every guardrail, as one ValidationError keyed by field. ``today`` overrides the
    sites' current date (tests)."""
    errors: dict[str, list[str]] = {}

    def add(field_name: str, message: str) -> None:
        errors.setdefault(field_name, []).append(message)

    if not targets:
        add("targets", "Choose at least one target.")
    for target in targets:
        problem = target_problem(target)
        if problem:
            add("targets", problem)
    sites: dict[tuple[str, int], str] = {}
    for target in targets:
        key = (target.matomo_url, target.site_id)
        if key in sites:
            add(
                "targets",
                f"Targets {sites[key]} and {target.name} are the same Matomo site; their visitors would collide.",
            )
        sites[key] = target.name

    if plan.preset_id is None and not plan.profile:
        add("preset", "Choose a preset.")
    elif plan.profile:
        problems = plan_profile(plan).validate()
        if problems:
            add("preset", "The preset cannot generate traffic: " + "; ".join(m for _, m in problems))

    if plan.start_date and plan.end_date:
        if plan.end_date < plan.start_date:
            add("end_date", "The last day must not be before the first day.")
        elif plan.day_count > MAX_WINDOW_DAYS:
            add(
                "end_date",
                f"A backfill covers at most {MAX_WINDOW_DAYS} days; this window has {plan.day_count}. "
                "Split it into several plans.",
            )
        if plan.start_date < FIRST_WEBSITE_DAY:
            add(
                "start_date",
                f"Matomo accepts no dates before {FIRST_WEBSITE_DAY} (the first website); "
                "choose a first day after the site was created.",
            )
        for target in targets:
            if target.site_created and plan.start_date < target.site_created:
                add(
                    "start_date",
                    f"Site {target.site_id} of {target.name} was created on {target.site_created} (Matomo's "
                    "ts_created); its reports start that day. Choose that day or a later one as the first day.",
                )
        zones = {target_timezone(target, plan) for target in targets} or {plan.snapshot.timezone}
        for zone in sorted(zones):
            current = today or site_today(zone)
            if plan.end_date >= current:
                add(
                    "end_date",
                    f"Only fully past days can be backfilled: the last day must be before today in the site's "
                    f"time zone ({zone}: today is {current.isoformat()}). Today belongs to live runs, and Matomo "
                    "replaces hits dated in the future by the time they arrive.",
                )
                break

    if not errors and plan.visits_per_day:
        total = sum(item.visits for item in planned_days(plan, targets))
        if total > MAX_TOTAL_VISITS:
            add(
                "total_cap",
                f"This plan would send {total:,} visits; at most {MAX_TOTAL_VISITS:,} are allowed. "
                "Lower the visits per day, set a total cap, or shorten the window.",
            )
    if errors:
        raise ValidationError(errors)


# --- days -----------------------------------------------------------------------------


@dataclass
class PlannedDay:
    target: Target
    day: date
    lane: int
    timezone: str
    visits: int
    uncapped: int


def planned_days(plan: BackfillPlan, targets: list[Target]) -> list[PlannedDay]:
    """Visits per target and site-local day: visits_per_day shaped by the weekly curve
    (visits_for_day_count, DST days included), clipped by the daily cap, then scaled down
    evenly (largest remainders, so the sum is exact) to fit the total cap."""
    profile = plan_profile(plan)
    days: list[PlannedDay] = []
    for target in targets:
        zone = target_timezone(target, plan)
        tz = ZoneInfo(zone)
        for day in plan.window():
            count = visits_for_day_count(profile, day, tz)
            capped = min(count, plan.daily_cap) if plan.daily_cap else count
            days.append(PlannedDay(target, day, plan.lane_of(day), zone, capped, count))
    total = sum(item.visits for item in days)
    if plan.total_cap and total > plan.total_cap:
        factor = plan.total_cap / total
        exact = [item.visits * factor for item in days]
        floors = [math.floor(value) for value in exact]
        leftover = plan.total_cap - sum(floors)
        order = sorted(range(len(days)), key=lambda i: (exact[i] - floors[i], -i), reverse=True)
        for i in order[:leftover]:
            floors[i] += 1
        for item, visits in zip(days, floors, strict=True):
            item.visits = visits
    return days


# --- the estimate -----------------------------------------------------------------------


@dataclass
class DayEstimate:
    target: str
    day: str
    weekday: str
    visits: int
    hits: int
    capped: bool = False


@dataclass
class TargetEstimate:
    name: str
    tracking_url: str
    site_id: int
    site_name: str
    timezone: str
    first_utc: str  # where the window starts and ends, in UTC (what cdt carries)
    last_utc: str
    visits: int
    hits: int
    requests: int
    duration_seconds: float | None
    measured_hits_per_second: float | None


@dataclass
class Estimate:
    days: list[DayEstimate]
    targets: list[TargetEstimate]
    total_visits: int
    total_hits: int
    total_requests: int
    hits_per_visit: float
    sample_visits: int
    hits_basis: str
    duration_seconds: float | None
    duration_basis: str
    notes: list[str] = field(default_factory=list)

    @property
    def day_count(self) -> int:
        return len({item.day for item in self.days})

    @property
    def visits_per_day_range(self) -> tuple[int, int]:
        values = [item.visits for item in self.days] or [0]
        return min(values), max(values)

    @property
    def duration_text(self) -> str:
        return format_duration(self.duration_seconds)

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Estimate | None:
        if not data:
            return None
        values = dict(data)
        values["days"] = [DayEstimate(**item) for item in data.get("days", [])]
        values["targets"] = [TargetEstimate(**item) for item in data.get("targets", [])]
        return cls(**values)

    def summary_text(self) -> str:
        duration = format_duration(self.duration_seconds) if self.duration_seconds is not None else "unknown"
        where = "; ".join(f"{t.name} (site {t.site_id}, {t.timezone})" for t in self.targets)
        return (
            f"{day_count_text(self.day_count)}, {self.total_visits:,} visits, ~{self.total_hits:,} hits "
            f"in ~{self.total_requests:,} bulk requests, expected duration {duration} → {where}."
        )


def day_count_text(count: int) -> str:
    """A number of days as the log and the command print it: "1 day", "1,200 days"."""
    return f"{count:,} day{'' if count == 1 else 's'}"


def format_duration(seconds: float | None) -> str:
    """ "2 h 05 min", "3 min 07 s", "12 s", "under 1 s"."""
    if seconds is None:
        return "–"
    if 0 < seconds < 1:
        return "under 1 s"  # "0 s" would read as "done" on a plan that has not started
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24} d {hours % 24} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def measured_speed(target: Target) -> float | None:
    """Hits per second this target took in its most recent completed backfill."""
    days = BackfillDay.objects.filter(
        target=target, status=BackfillDay.Status.DONE, plan__status=BackfillPlan.Status.COMPLETED
    )
    latest = days.order_by("-plan__finished_at").values_list("plan_id", flat=True).first()
    if latest is None:
        return None
    totals = days.filter(plan_id=latest).aggregate(hits=Sum("hits_sent"), seconds=Sum("active_seconds"))
    if not totals["hits"] or not totals["seconds"]:
        return None
    return totals["hits"] / totals["seconds"]


def sample_hits(plan: BackfillPlan, target: Target | None, first_day: date, visits: int) -> tuple[float, float, int]:
    """(hits per visit, hits per bulk request, sample size) from generated visits."""
    count = max(1, min(SAMPLE_VISITS, visits or SAMPLE_VISITS))
    profile = plan_profile(plan)
    zone = target_timezone(target, plan) if target else profile.timezone
    catalog = plan.snapshot.catalog()
    stream = day_visits(
        profile,
        catalog,
        plan_funnels(plan),
        seed=plan.lane_seed(0),
        site_id=target.site_id if target else 1,
        token_present=True,
        order_id_prefix="estimate",
        timezone=zone,
        day=first_day,
        count=count,
        goals=plan_goals(plan, target, catalog),
        population=plan_population(plan, 0),
    )
    sizes = [len(visit.hits) for visit in stream]
    hits_per_visit = sum(sizes) / len(sizes)
    full_batches = []
    current = 0
    for size in sizes:  # whole visits per batch, as the runner packs them
        if current and current + size > plan.batch_size:
            full_batches.append(current)
            current = 0
        current += size
    if not full_batches:
        full_batches = [plan.batch_size]
    requests = sum(max(1, math.ceil(hits / request_hits(plan.batch_size))) for hits in full_batches)
    return hits_per_visit, max(1.0, sum(full_batches) / requests), len(sizes)


def build_estimate(plan: BackfillPlan, targets: list[Target], *, days: list[PlannedDay] | None = None) -> Estimate:
    days = days if days is not None else planned_days(plan, targets)
    first = days[0] if days else None
    hits_per_visit, per_request, sample = sample_hits(
        plan, first.target if first else None, first.day if first else plan.start_date, first.visits if first else 0
    )
    rows = [
        DayEstimate(
            target=item.target.name,
            day=item.day.isoformat(),
            weekday=item.day.strftime("%a"),
            visits=item.visits,
            hits=round(item.visits * hits_per_visit),
            capped=item.visits < item.uncapped,
        )
        for item in days
    ]
    target_rows: list[TargetEstimate] = []
    bases: set[str] = set()
    for target in targets:
        mine = [item for item in days if item.target.pk == target.pk]
        zone = mine[0].timezone if mine else target_timezone(target, plan)
        visits = sum(item.visits for item in mine)
        hits = round(visits * hits_per_visit)
        requests = sum(math.ceil(item.visits * hits_per_visit / per_request) for item in mine if item.visits)
        speed = measured_speed(target)
        duration, basis = _duration(plan, hits, requests, speed)
        bases.add(basis)
        start, _ = local_day_bounds(plan.start_date, ZoneInfo(zone))
        _, end = local_day_bounds(plan.end_date, ZoneInfo(zone))
        target_rows.append(
            TargetEstimate(
                name=target.name,
                tracking_url=target.tracking_url,
                site_id=target.site_id,
                site_name=target.site_name,
                timezone=zone,
                first_utc=_utc(start),
                last_utc=_utc(end - 1),
                visits=visits,
                hits=hits,
                requests=requests,
                duration_seconds=duration,
                measured_hits_per_second=round(speed, 1) if speed else None,
            )
        )
    durations = [row.duration_seconds for row in target_rows if row.duration_seconds is not None]
    notes = _notes(plan, rows, days)
    return Estimate(
        days=rows,
        targets=target_rows,
        total_visits=sum(row.visits for row in rows),
        total_hits=sum(row.hits for row in rows),
        total_requests=sum(row.requests for row in target_rows),
        hits_per_visit=round(hits_per_visit, 2),
        sample_visits=sample,
        hits_basis=(
            f"Hits from a generated sample: the first {sample} visits of {first.day if first else plan.start_date} "
            f"with this plan's seed average {hits_per_visit:.2f} hits per visit."
        ),
        duration_seconds=max(durations) if durations else None,
        duration_basis=" ".join(sorted(bases))
        + (" Targets are sent in parallel on the workers." if len(targets) > 1 else ""),
        notes=notes,
    )


def draft_estimate(plan: BackfillPlan) -> tuple[Estimate | None, str]:
    """The estimate of a draft as it would be confirmed now (or why there is none)."""
    try:
        return build_estimate(plan, list(plan.targets.order_by("name"))), ""
    except (TrafficConfigError, CatalogError, ValueError) as exc:  # the preset changed since: say so
        return None, f"No estimate: {exc}"


def _s(number: float) -> str:
    return "" if number == 1 else "s"


def _duration(plan: BackfillPlan, hits: int, requests: int, speed: float | None) -> tuple[float, str]:
    rps = plan.max_requests_per_second
    if rps and speed:
        return max(requests / rps, hits / speed), (
            f"At most {rps:,g} request{_s(rps)}/s, or the target's measured {speed:,.0f} hits/s if slower."
        )
    if rps:
        return requests / rps, f"At the limit of {rps:,g} request{_s(rps)} per second."
    if speed:
        return hits / speed, f"At the target's measured speed ({speed:,.0f} hits/s in its last backfill)."
    return hits / ASSUMED_HITS_PER_SECOND, (
        f"Assuming {ASSUMED_HITS_PER_SECOND:,.0f} hits/s (a small Matomo in bulk); no limit is set and the target "
        "has no measured speed yet."
    )


def _notes(plan: BackfillPlan, rows: list[DayEstimate], days: list[PlannedDay]) -> list[str]:
    notes = []
    share = round(float(plan.profile.get("returning_visitor_share", 0) or 0) * 100)
    if share:
        notes.append(
            f"Matomo will report about {share}% returning visits on each day (it counts a visit as returning only "
            "when it knows the visitor from an earlier visit: visitors of earlier days, or earlier the same day, "
            "come back). A live run of the same target and preset afterwards continues these visitors."
        )
    catalog = plan.snapshot.catalog()
    for target in sorted({day.target for day in days}, key=lambda t: t.name):
        goals_notice = target.goals_notice(catalog)
        if goals_notice:
            notes.append(goals_notice)
    for target in {item.target.pk: item.target for item in days}.values():
        warning = target.timezone_warning(plan.snapshot.timezone)
        if warning:
            notes.append(f"{target.name}: {warning}")
    capped = [row for row in rows if row.capped]
    if plan.daily_cap and capped:
        notes.append(f"The daily cap of {plan.daily_cap:,} visits clips {len(capped)} day(s).")
    uncapped = sum(item.uncapped for item in days)
    if plan.total_cap and uncapped > plan.total_cap:
        notes.append(
            f"The total cap of {plan.total_cap:,} visits scales every day down (from {uncapped:,} visits in all)."
        )
    if plan.parallel_days > 1:
        notes.append(
            f"{plan.parallel_days} days of a target are sent at once: each lane of days has its own returning "
            "visitors, so a returning visitor comes back only on every "
            f"{plan.parallel_days}th day. Use 1 for the most realistic returning visitors."
        )
    return notes


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
