"""Backfill pages: the list, a draft's form, a plan's page (estimate, progress, days, log),
the explicit confirmation, and the HTMX refresh of the live panels.

The web process never sends traffic and never calls Matomo: confirming enqueues the
days for the workers, cancelling a running plan enqueues the report invalidation.
Panels of finished plans render without polling attributes, so polling stops by itself.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from backfill.forms import BackfillPlanForm, ConfirmForm
from backfill.models import BackfillPlan, DraftChanged, PlanNotEditable
from backfill.planning import Estimate, draft_estimate
from backfill.verification import verify_plan
from trafficinator.http import HtmxHttpRequest

RECENT_PLANS = 20
LOG_LIMIT = 200


def _plan(pk: int) -> BackfillPlan:
    return get_object_or_404(BackfillPlan.objects.select_related("created_by", "preset"), pk=pk)


def _plan_url(plan: BackfillPlan) -> str:
    return reverse("backfill:detail", args=[plan.pk])


def plan_estimate(plan: BackfillPlan) -> tuple[Estimate | None, str]:
    if plan.is_draft:
        return draft_estimate(plan)
    return Estimate.from_json(plan.estimate), ""


def finished_plans() -> list[BackfillPlan]:
    plans = BackfillPlan.objects.select_related("created_by").prefetch_related("targets")
    return list(plans.finished().order_by("-finished_at", "-pk")[:RECENT_PLANS])


def days_context(plan: BackfillPlan) -> dict:
    days = list(plan.days.select_related("target").order_by("day", "target__name"))
    return {"plan": plan, "days": days, "multi_target": len({day.target_id for day in days}) > 1}


# --- pages ----------------------------------------------------------------------------------


@permission_required("backfill.view_backfillplan", raise_exception=True)
@require_GET
def plan_list(request: HtmxHttpRequest) -> HttpResponse:
    plans = BackfillPlan.objects.select_related("created_by").prefetch_related("targets")
    return render(
        request,
        "backfill/list.html",
        {
            "active": list(plans.active()),
            "drafts": list(plans.filter(status=BackfillPlan.Status.DRAFT)),
            "finished": finished_plans(),
        },
    )


@permission_required("backfill.add_backfillplan", raise_exception=True)
@require_http_methods(["GET", "POST"])
def plan_new(request: HtmxHttpRequest) -> HttpResponse:
    form = BackfillPlanForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            plan = form.save_draft(request.user)
        messages.success(request, "Draft saved. Check the estimate, then confirm it to start.")
        return redirect(_plan_url(plan))
    return render(request, "backfill/form.html", {"form": form, "plan": None})


@permission_required("backfill.change_backfillplan", raise_exception=True)
@require_http_methods(["GET", "POST"])
def plan_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    plan = _plan(pk)
    if not plan.can_edit():
        messages.error(request, f"Plan {plan.pk} is {plan.get_status_display().lower()}: only drafts can be edited.")
        return redirect(_plan_url(plan))
    form = BackfillPlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                form.save_draft(request.user)
        except PlanNotEditable as refused:  # confirmed elsewhere while this form was checked
            messages.error(request, refused.message)
        return redirect(_plan_url(plan))
    return render(request, "backfill/form.html", {"form": form, "plan": plan})


@permission_required("backfill.view_backfillplan", raise_exception=True)
@require_GET
def plan_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    plan = _plan(pk)
    estimate, estimate_error = plan_estimate(plan)
    context = {
        "plan": plan,
        "targets": list(plan.targets.order_by("name")),
        "estimate": estimate,
        "estimate_error": estimate_error,
        "log_entries": list(plan.logs.select_related("target").order_by("-created_at", "-pk")[:LOG_LIMIT]),
        "verification": plan.verification,
        "is_run": False,
        "verify_url": reverse("backfill:verify", args=[plan.pk]),
        "can_verify": not plan.is_draft and any(target.has_token for target in plan.targets.all()),
    }
    context.update(days_context(plan))
    return render(request, "backfill/detail.html", context)


@permission_required("backfill.view_backfillplan", raise_exception=True)
@require_POST
def plan_verify(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Compare what each day sent with Matomo's day report and keep the answer."""
    plan = _plan(pk)
    rows = verify_plan(plan)
    differing = sum(1 for row in rows if not row.ok)
    if differing:
        messages.warning(request, f"{differing} of {len(rows)} day(s) differ from what was sent; see below.")
    else:
        messages.success(request, "Matomo recorded exactly what was sent.")
    return redirect(_plan_url(plan) + "#verification")


@permission_required("backfill.run_backfill", raise_exception=True)
@require_http_methods(["GET", "POST"])
def plan_confirm(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Restate the estimate; typing the target's name confirms and starts the plan."""
    plan = _plan(pk)
    if not plan.can_confirm():
        messages.error(request, f"Plan {plan.pk} is {plan.get_status_display().lower()}: nothing to confirm.")
        return redirect(_plan_url(plan))
    form = ConfirmForm(request.POST or None, plan=plan)
    if request.method == "POST" and form.is_valid():
        try:
            # Not inside one transaction: the estimate is generated before confirm() takes
            # the write lock for its conditional UPDATE and the day rows.
            confirmed = plan.confirm(by=request.user, revision=form.cleaned_data["revision"])
            if confirmed:
                plan.start()
        except DraftChanged as lost:  # edited meanwhile: show the new estimate, ask again
            messages.error(request, lost.message)
            return redirect(reverse("backfill:confirm", args=[plan.pk]))
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            if confirmed:
                messages.success(request, f"Plan {plan.pk} confirmed: its days are queued for the workers.")
            return redirect(_plan_url(plan))
    estimate, estimate_error = draft_estimate(plan)
    return render(
        request,
        "backfill/confirm.html",
        {"plan": plan, "form": form, "estimate": estimate, "estimate_error": estimate_error},
    )


@permission_required("backfill.run_backfill", raise_exception=True)
@require_POST
def plan_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    plan = _plan(pk)
    if plan.cancel(by=request.user):
        messages.success(request, f"Plan {plan.pk} cancelled. What was sent stays in Matomo.")
    else:
        messages.error(request, f"Plan {plan.pk} is {plan.get_status_display().lower()}: nothing to cancel.")
    return redirect(_plan_url(plan))


@permission_required("backfill.run_backfill", raise_exception=True)
@require_POST
def plan_resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    plan = _plan(pk)
    with transaction.atomic():
        count = plan.resume(by=request.user)
    if count:
        messages.success(request, f"{count} day(s) handed to the workers again.")
    else:
        messages.info(request, "Nothing to resume: every unfinished day is held by a live worker, or none is left.")
    return redirect(_plan_url(plan))


@permission_required("backfill.add_backfillplan", raise_exception=True)
@require_POST
def plan_clone(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    plan = _plan(pk)
    copy = plan.clone(by=request.user)
    messages.success(request, f"Plan {copy.pk} is a new draft copied from plan {plan.pk}, with a new seed.")
    return redirect(reverse("backfill:edit", args=[copy.pk]))


# --- live panels ------------------------------------------------------------------------------


@permission_required("backfill.view_backfillplan", raise_exception=True)
@require_GET
def plan_progress(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The progress panel (the plan page, the list and the dashboard poll it), with what
    else on the asking page changes, out of band: one poll, so the parts never disagree."""
    plan = _plan(pk)
    if not request.htmx:
        return redirect(_plan_url(plan))
    compact = request.GET.get("compact") == "1"
    in_list = compact and request.GET.get("list") == "1"
    context = {"plan": plan, "compact": compact, "in_list": in_list}
    if not compact:  # the plan's page: its header, buttons and days follow the progress
        context.update(oob_plan=True, targets=list(plan.targets.order_by("name")), **days_context(plan))
    elif in_list and not plan.is_active:  # its last refresh there: it joins the finished plans
        context.update(oob_finished=True, finished=finished_plans())
    return render(request, "backfill/_progress.html", context)


@permission_required("backfill.view_backfillplan", raise_exception=True)
@require_GET
def plan_report(request: HtmxHttpRequest, pk: int, fmt: str) -> HttpResponse:
    """The plan and its days as JSON, or the days as CSV (planned, sent, accepted, invalid)."""
    from backfill import reports

    plan = get_object_or_404(BackfillPlan, pk=pk)
    content, content_type = reports.render(plan, fmt)
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="backfill-{plan.pk}.{fmt}"'
    return response
