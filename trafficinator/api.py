"""The JSON API for scripts and CI (README "API"): presets, targets, runs and backfill plans.

Plain function views, like the pages: the API is a dozen endpoints over model methods that
already hold the rules (Run.objects.create_run, Run.request_stop, BackfillPlan.confirm ...),
so a framework would add a dependency and a second way of doing things, not safety.

Authentication: ``Authorization: Bearer <personal API token>`` (trafficinator.models). A
browser session also works, but then unsafe methods need the CSRF token like a form post:
a session cookie alone never changes anything. Permissions are the pages' permissions.
Every error is JSON: {"error": "...", "code": "...", "fields": {...}} with a fitting status.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from backfill.models import BackfillPlan, DraftChanged
from backfill.planning import draft_estimate
from presets.models import Preset
from runs import reports
from runs.models import Run, RunShard
from runs.shards import parse_shards, resolve_shards
from targets.models import Target
from trafficinator.models import ApiToken
from trafficinator.validation import StrictJSONError, loads_strict

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LIST_LIMIT = 100


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.fields:
            body["fields"] = self.fields
        response = JsonResponse(body, status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="trafficinator"'
        return response


def _protected_view(request: HttpRequest) -> HttpResponse:
    """Stands for a view that is not csrf_exempt in the check below."""
    return HttpResponse()


def _csrf_failure(request: HttpRequest) -> HttpResponseBase | None:
    """Django's own CSRF check, as the middleware would run it on a form post."""
    check = CsrfViewMiddleware(_protected_view)
    check.process_request(request)
    return check.process_view(request, _protected_view, (), {})


def authenticate(request: HttpRequest) -> None:
    """Sets request.user from a Bearer token, or keeps the session's user (CSRF-checked
    for unsafe methods). Raises ApiError 401/403."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "unauthorized", "Use “Authorization: Bearer <API token>”.")
        token = ApiToken.objects.authenticate(secret.strip())
        if token is None:
            raise ApiError(401, "unauthorized", "The API token is unknown or revoked.")
        request.user = token.user
        return
    if not request.user.is_authenticated:
        raise ApiError(401, "unauthorized", "Authentication needed: send “Authorization: Bearer <API token>”.")
    if request.method not in SAFE_METHODS and _csrf_failure(request) is not None:
        raise ApiError(403, "csrf_failed", "A session needs the CSRF token for this; scripts should use an API token.")


def api_view(methods: dict[str, str | tuple[str, ...] | None]):
    """``methods``: HTTP method -> permission(s) needed (any of a tuple; None: any user)."""

    def decorate(view: Callable[..., Any]):
        @csrf_exempt  # checked in authenticate() for sessions; a Bearer token is not ambient
        @login_not_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            response: HttpResponse
            try:
                authenticate(request)  # first: nothing about an endpoint is told to a stranger
                if request.method not in methods:
                    raise ApiError(405, "method_not_allowed", f"Use {' or '.join(methods)}.")
                needed = methods[request.method]
                if needed:
                    perms = needed if isinstance(needed, tuple) else (needed,)
                    if not any(request.user.has_perm(perm) for perm in perms):
                        raise ApiError(403, "forbidden", f"Permission needed: {' or '.join(perms)}.")
                result = view(request, *args, **kwargs)
            except ApiError as error:
                response = error.response()
            except ValidationError as error:
                fields = getattr(error, "message_dict", None)
                response = ApiError(400, "invalid", "; ".join(error.messages), fields).response()
            else:
                response = result if isinstance(result, HttpResponse) else JsonResponse(result)
            if request.method not in methods:
                response["Allow"] = ", ".join(methods)
            return response

        return wrapped

    return decorate


def json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        # Strict and bounded like every other JSON we are given: 100,000 nested [ would be
        # a RecursionError (a 500), NaN or Infinity a number no field can use.
        data = loads_strict(request.body)
    except StrictJSONError as error:
        raise ApiError(400, "bad_json", f"The body is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "The body must be a JSON object.")
    return data


def _get(model, pk: int, label: str):
    found = model.objects.filter(pk=pk).first()
    if found is None:
        raise ApiError(404, "not_found", f"No {label} {pk}.")
    return found


def _int_field(data: dict, name: str, *, minimum: int = 1) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(400, "invalid", f"“{name}” must be a whole number of at least {minimum}.", {name: ["invalid"]})
    return value


def _lookup(model, value: Any, field: str, label: str):
    """A preset or target by name (string) or id (number)."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ApiError(400, "invalid", f"“{field}”: give a {label} name or id.", {field: ["invalid"]})
    found = model.objects.filter(**({"pk": value} if isinstance(value, int) else {"name": value})).first()
    if found is None:
        names = ", ".join(model.objects.order_by("name").values_list("name", flat=True)[:50]) or "none"
        raise ApiError(400, "invalid", f"No {label} “{value}”. Known: {names}.", {field: ["unknown"]})
    return found


# --- presets and targets --------------------------------------------------------------------


@api_view({"GET": ("presets.view_preset", "runs.run_traffic")})
def presets(request: HttpRequest) -> dict:
    return {
        "presets": [
            {
                "id": preset.pk,
                "name": preset.name,
                "builtin": preset.is_builtin,
                "visits_per_day": preset.visits_per_day,
                "thresholds": preset.threshold_lines(),
            }
            for preset in Preset.objects.order_by("-is_builtin", "visits_per_day", "name")
        ]
    }


@api_view({"GET": ("targets.view_target", "runs.run_traffic")})
def targets(request: HttpRequest) -> dict:
    return {
        "targets": [
            {
                "id": target.pk,
                "name": target.name,
                "tracking_url": target.tracking_url,
                "site_id": target.site_id,
                "enabled": target.enabled,
                "has_token": target.has_token,
            }
            for target in Target.objects.order_by("name")
        ]
    }


# --- runs ------------------------------------------------------------------------------------


def run_status(run: Run, request: HttpRequest) -> dict[str, Any]:
    run_scope, _ = run.threshold_scopes()
    totals = run.totals
    return {
        "id": run.pk,
        "status": run.status,
        "active": run.is_active,
        "lost": run.is_lost(),
        "outcome": run.outcome or None,
        "failed_thresholds": run.failed_threshold_labels(),
        "thresholds": run.thresholds,
        "abort_on_fail": run.abort_on_fail,
        "stopped_by_thresholds": run.stopped_by_thresholds,
        "end_reason": run.end_reason,
        "preset": run.preset_name,
        "visits_per_day": run.visits_per_day,
        "seed": run.seed,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "figures": reports.derived_figures(totals, run_scope.measure),
        "in_flight": totals.get("in_flight", 0),
        "shard_count": run.shard_count,
        "shards": [
            {
                "index": shard.index,
                "status": shard.status,
                "lost": shard.is_lost(),
                "host": shard.loader_host or None,
                "pid": shard.loader_pid,
                "claims": shard.claim_epoch,
                "heartbeat_at": shard.heartbeat_at.isoformat() if shard.heartbeat_at else None,
                "hits_per_second": shard.hits_per_second if shard.status in RunShard.CLAIMED_STATUSES else 0.0,
                "sent": (shard.stats or {}).get("totals", {}).get("sent", 0),
            }
            for shard in run.shard_list()
        ],
        "urls": {
            "self": request.build_absolute_uri(reverse("api:run", args=[run.pk])),
            "page": request.build_absolute_uri(reverse("runs:detail", args=[run.pk])),
            "report": request.build_absolute_uri(reverse("api:run_report", args=[run.pk])),
        },
    }


def _run_targets(data: dict) -> list[tuple[Target, float, int | None]]:
    """["shop", {"name": "blog", "weight": 2}, {"name": "docs", "visits_per_day": 5000}]"""
    items = data.get("targets")
    if not isinstance(items, list) or not items:
        raise ApiError(
            400, "invalid", "“targets”: give a list of target names (or objects).", {"targets": ["required"]}
        )
    entries = []
    for item in items:
        if isinstance(item, dict):
            target = _lookup(Target, item.get("name", item.get("id")), "targets", "target")
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ApiError(400, "invalid", "“weight” must be a number of 0 or more.", {"targets": ["invalid"]})
            entries.append((target, float(weight), _int_field(item, "visits_per_day")))
        else:
            entries.append((_lookup(Target, item, "targets", "target"), 1.0, None))
    return entries


@api_view({"GET": "runs.view_run", "POST": "runs.run_traffic"})
def runs(request: HttpRequest) -> dict | JsonResponse:
    if request.method == "GET":
        queryset = Run.objects.prefetch_related("run_targets__target", "shards").order_by("-created_at", "-pk")
        status = request.GET.get("status")
        if status:
            if status not in Run.Status.values:
                raise ApiError(400, "invalid", f"Unknown status “{status}”: {', '.join(Run.Status.values)}.")
            queryset = queryset.filter(status=status)
        return {"runs": [run_status(run, request) for run in queryset[:LIST_LIMIT]]}
    data = json_body(request)
    unknown = set(data) - {
        "preset",
        "targets",
        "visits_per_day",
        "duration_seconds",
        "max_visits",
        "daily_cap",
        "seed",
        "bulk",
        "batch_size",
        "thresholds",
        "abort_on_fail",
        "shards",
    }
    if unknown:
        raise ApiError(400, "invalid", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    preset = _lookup(Preset, data.get("preset"), "preset", "preset")
    thresholds = data.get("thresholds")
    if thresholds is not None and not (isinstance(thresholds, list) and all(isinstance(t, str) for t in thresholds)):
        raise ApiError(400, "invalid", "“thresholds” must be a list of strings.", {"thresholds": ["invalid"]})
    bulk = data.get("bulk", False)
    if not isinstance(bulk, bool):
        raise ApiError(400, "invalid", "“bulk” must be true or false.", {"bulk": ["invalid"]})
    abort_on_fail = data.get("abort_on_fail", False)
    if not isinstance(abort_on_fail, bool):
        raise ApiError(400, "invalid", "“abort_on_fail” must be true or false.", {"abort_on_fail": ["invalid"]})
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "invalid", "“seed” must be a whole number.", {"seed": ["invalid"]})
    try:
        asked_shards = parse_shards(data.get("shards", 1))
    except ValueError as error:
        raise ApiError(400, "invalid", f"“shards”: {error}", {"shards": ["invalid"]}) from None
    shards = resolve_shards(preset, _int_field(data, "visits_per_day"), bulk, asked_shards)
    run = Run.objects.create_run(
        enqueue=True,
        shards=shards,
        preset=preset,
        targets=_run_targets(data),
        created_by=request.user,
        seed=seed,
        visits_per_day=_int_field(data, "visits_per_day"),
        duration_seconds=_int_field(data, "duration_seconds"),
        max_visits=_int_field(data, "max_visits"),
        daily_cap=_int_field(data, "daily_cap"),
        bulk=bulk,
        batch_size=_int_field(data, "batch_size") or 100,
        thresholds=thresholds,
        abort_on_fail=abort_on_fail,
    )
    response = JsonResponse(run_status(run, request), status=201)
    response["Location"] = reverse("api:run", args=[run.pk])
    return response


@api_view({"GET": "runs.view_run"})
def run(request: HttpRequest, pk: int) -> dict:
    return run_status(_get(Run, pk, "run"), request)


@api_view({"POST": "runs.run_traffic"})
def run_stop(request: HttpRequest, pk: int) -> dict:
    found = _get(Run, pk, "run")
    if not found.request_stop(by=request.user):  # logs who asked
        raise ApiError(409, "conflict", f"Run {pk} is {found.status}: nothing to stop.")
    return run_status(found, request)


@api_view({"GET": "runs.view_run"})
def run_report(request: HttpRequest, pk: int) -> HttpResponse:
    found = _get(Run, pk, "run")
    fmt = request.GET.get("format", "json")
    if fmt not in reports.FORMATS:
        raise ApiError(400, "invalid", f"“format” is one of {', '.join(reports.FORMATS)}.")
    content, content_type = reports.render(found, fmt)
    response = HttpResponse(content, content_type=content_type)
    if fmt == "html":
        from runs.views import REPORT_CSP

        response["Content-Security-Policy"] = REPORT_CSP
    return response


# --- backfill plans ---------------------------------------------------------------------------


def plan_status(plan: BackfillPlan, request: HttpRequest) -> dict[str, Any]:
    progress = plan.progress()
    return {
        "id": plan.pk,
        "status": plan.status,
        "end_reason": plan.end_reason,
        "preset": plan.preset_name,
        "targets": [target.name for target in plan.targets.order_by("name")],
        "start_date": plan.start_date.isoformat(),
        "end_date": plan.end_date.isoformat(),
        "seed": plan.seed,
        "confirmation": plan.confirmation_phrase() if plan.can_confirm() else None,
        "revision": plan.draft_revision,
        "estimate": plan.estimate or None,
        "progress": {
            "days": progress.days,
            "days_done": progress.days_done,
            "days_failed": progress.days_failed,
            "planned_visits": progress.planned_visits,
            "visits_done": progress.visits_done,
            "hits_sent": progress.hits_sent,
            "hits_accepted": progress.hits_accepted,
            "hits_invalid": progress.hits_invalid,
            "hits_failed": progress.hits_failed,
        },
        "urls": {
            "self": request.build_absolute_uri(reverse("api:plan", args=[plan.pk])),
            "page": request.build_absolute_uri(reverse("backfill:detail", args=[plan.pk])),
        },
    }


_DATE_FIELDS = ("start_date", "end_date")


@api_view({"GET": "backfill.view_backfillplan", "POST": "backfill.add_backfillplan"})
def plans(request: HttpRequest) -> dict | JsonResponse:
    if request.method == "GET":
        queryset = BackfillPlan.objects.order_by("-created_at", "-pk")[:LIST_LIMIT]
        return {"plans": [plan_status(plan, request) for plan in queryset]}
    from datetime import date

    data = json_body(request)
    allowed = {"preset", "targets", "start_date", "end_date", "last_days", "visits_per_day", "daily_cap"}
    allowed |= {"total_cap", "seed", "max_requests_per_second", "batch_size"}
    unknown = set(data) - allowed
    if unknown:
        raise ApiError(400, "invalid", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    names = data.get("targets")
    if not isinstance(names, list) or not names:
        raise ApiError(400, "invalid", "“targets”: give a list of target names.", {"targets": ["required"]})
    dates: dict[str, date] = {}
    for name in _DATE_FIELDS:
        if data.get(name) is not None:
            try:
                dates[name] = date.fromisoformat(str(data[name]))
            except ValueError:
                raise ApiError(400, "invalid", f"“{name}” is not a date (YYYY-MM-DD).", {name: ["invalid"]}) from None
    rps = data.get("max_requests_per_second")
    if rps is not None and (isinstance(rps, bool) or not isinstance(rps, int | float) or rps <= 0):
        raise ApiError(400, "invalid", "“max_requests_per_second” must be above 0.", {"max_requests_per_second": ["x"]})
    with transaction.atomic():
        plan = BackfillPlan.objects.create_plan(
            targets=[_lookup(Target, name, "targets", "target") for name in names],
            preset=_lookup(Preset, data.get("preset"), "preset", "preset"),
            last_days=_int_field(data, "last_days"),
            visits_per_day=_int_field(data, "visits_per_day"),
            daily_cap=_int_field(data, "daily_cap"),
            total_cap=_int_field(data, "total_cap"),
            seed=_int_field(data, "seed", minimum=0),
            max_requests_per_second=rps,
            batch_size=_int_field(data, "batch_size") or 400,
            created_by=request.user,
            start_date=dates.get("start_date"),
            end_date=dates.get("end_date"),
        )
    body = plan_status(plan, request)
    estimate, problem = draft_estimate(plan)
    body["estimate"] = estimate.as_json() if estimate is not None else None
    body["estimate_problem"] = problem or None
    response = JsonResponse(body, status=201)
    response["Location"] = reverse("api:plan", args=[plan.pk])
    return response


@api_view({"GET": "backfill.view_backfillplan"})
def plan(request: HttpRequest, pk: int) -> dict:
    return plan_status(_get(BackfillPlan, pk, "backfill plan"), request)


@api_view({"POST": "backfill.run_backfill"})
def plan_confirm(request: HttpRequest, pk: int) -> dict:
    """Confirm and start a draft. Like the page, it needs the explicit confirmation: the
    target's name(s) as in the plan's "confirmation" field; with the plan's "revision"
    (as read with its estimate) a draft edited since is refused (409)."""
    found = _get(BackfillPlan, pk, "backfill plan")
    if not found.can_confirm():
        raise ApiError(409, "conflict", f"Plan {pk} is {found.status}: only drafts can be confirmed.")
    phrase = found.confirmation_phrase()
    body = json_body(request)
    given = body.get("confirmation")
    if not isinstance(given, str) or " ".join(given.split()) != phrase:
        raise ApiError(
            400,
            "confirmation_needed",
            f'Send {{"confirmation": "{phrase}"}} (the target\'s name) to confirm plan {pk}.',
            {"confirmation": ["mismatch"]},
        )
    try:
        confirmed = found.confirm(by=request.user, revision=_int_field(body, "revision", minimum=0))
    except DraftChanged as lost:
        raise ApiError(409, "conflict", "; ".join(lost.messages)) from None
    if confirmed:
        found.start()
    found.refresh_from_db()
    return plan_status(found, request)


@api_view({"POST": "backfill.run_backfill"})
def plan_cancel(request: HttpRequest, pk: int) -> dict:
    found = _get(BackfillPlan, pk, "backfill plan")
    # cancel() logs who asked and, for a running plan, queues the report invalidation.
    if not found.cancel(by=request.user):
        raise ApiError(409, "conflict", f"Plan {pk} is {found.status}: nothing to cancel.")
    return plan_status(found, request)


def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    return ApiError(404, "not_found", f"No API endpoint {request.path}.").response()


not_found = csrf_exempt(login_not_required(not_found))
