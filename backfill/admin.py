"""Backfill plans in the admin: drafts are edited with the same form (and guardrails) as
the plan pages; confirming happens only on the plan's confirm page; everything else is
read-only, with per-day progress inline."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db import transaction
from django.http import HttpRequest
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from backfill.forms import BackfillPlanForm
from backfill.models import BackfillDay, BackfillLog, BackfillPlan, PlanNotEditable


class BackfillDayInline(admin.TabularInline):
    model = BackfillDay
    extra = 0
    can_delete = False
    ordering = ["day", "target__name"]
    fields = readonly_fields = (
        "day",
        "target",
        "status",
        "planned_visits",
        "visits_done",
        "percent",
        "hits_sent",
        "hits_accepted",
        "hits_invalid",
        "hits_failed",
        "hits_resent",
        "worker",
        "heartbeat_at",
        "message",
    )
    verbose_name = "day"
    verbose_name_plural = "Days (progress per site-local day)"

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("target")

    @admin.display(description="%")
    def percent(self, obj: BackfillDay) -> str:
        return f"{obj.percent_done:.0f}"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class BackfillLogInline(admin.TabularInline):
    model = BackfillLog
    extra = 0
    can_delete = False
    fields = readonly_fields = ("created_at", "level", "target", "day", "message")
    ordering = ["-created_at", "-pk"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(BackfillPlan)
class BackfillPlanAdmin(admin.ModelAdmin):
    form = BackfillPlanForm
    list_display = ["id", "window", "target_names", "preset_name", "visits_per_day", "status", "progress", "created_at"]
    list_filter = ["status"]
    search_fields = ["preset_name", "end_reason", "targets__name"]
    inlines = [BackfillDayInline, BackfillLogInline]
    actions = ["cancel_plans", "run_again"]
    readonly_fields = [
        "status",
        "progress_and_eta",
        "confirm_link",
        "end_reason",
        "estimate_summary",
        "preset_name",
        "created_by",
        "created_at",
        "confirmed_by_name",
        "confirmed_at",
        "started_at",
        "finished_at",
        "invalidation",
        "invalidation_message",
        "invalidated_at",
        "cloned_from",
    ]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("targets")

    def get_fieldsets(self, request, obj=None):
        settings_fields = list(BackfillPlanForm.Meta.fields)
        if obj is not None and not obj.can_edit():
            settings_fields = [name for name in settings_fields if name not in ("last_days",)]
        status = ["status", "confirm_link", "progress_and_eta", "end_reason", "estimate_summary"]
        history = [
            "created_by",
            "created_at",
            "confirmed_by_name",
            "confirmed_at",
            "started_at",
            "finished_at",
            "cloned_from",
        ]
        after = ["invalidation", "invalidation_message", "invalidated_at"]
        if obj is None:
            return [(None, {"fields": settings_fields})]
        return [
            ("Status", {"fields": status}),
            ("Settings", {"fields": settings_fields}),
            ("History", {"fields": history}),
            ("After the backfill", {"fields": after}),
        ]

    def has_change_permission(self, request, obj=None) -> bool:
        # Only drafts are editable; confirmed, running and finished plans are shown read-only.
        if obj is not None and not obj.can_edit():
            return False
        return super().has_change_permission(request, obj)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # A plan confirmed since its change page was opened: say so instead of a 403 (it
        # is no longer editable when the POST arrives) or a 500 (it was confirmed while the
        # POST was being checked, and save_draft refused).
        if request.method == "POST" and object_id is not None:
            plan = self.get_object(request, unquote(object_id))
            if plan is not None and not plan.can_edit():
                self.message_user(request, plan.not_editable().message, messages.ERROR)
                return redirect(request.path)
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except PlanNotEditable as refused:  # rolled back: nothing was saved or logged
            self.message_user(request, refused.message, messages.ERROR)
            return redirect(request.path)

    def save_model(self, request, obj, form, change) -> None:
        pass  # save_related saves the draft, its creator, its targets and its log line at once

    def save_related(self, request, form, formsets, change) -> None:
        with transaction.atomic():
            form.save_draft(request.user)  # saves the plan, its targets and a log line
            for formset in formsets:  # read-only inlines: nothing to save, but the admin expects it
                self.save_formset(request, form, formset, change=change)

    @admin.display(description="window")
    def window(self, obj: BackfillPlan) -> str:
        return f"{obj.start_date} – {obj.end_date}"

    @admin.display(description="targets")
    def target_names(self, obj: BackfillPlan) -> str:
        return ", ".join(target.name for target in obj.targets.all())

    @admin.display(description="progress")
    def progress(self, obj: BackfillPlan) -> str:
        if obj.is_draft:
            return "–"
        return f"{obj.progress().percent:.0f} %"

    @admin.display(description="progress and ETA")
    def progress_and_eta(self, obj: BackfillPlan) -> str:
        if obj.pk is None or obj.is_draft:
            return "Nothing is sent before the plan is confirmed."
        p = obj.progress()
        text = (
            f"{p.percent:.1f} % · days {p.days_done}/{p.days} · visits {p.visits_done:,}/{p.planned_visits:,} · "
            f"hits {p.hits_sent:,} (accepted {p.hits_accepted:,}, invalid {p.hits_invalid:,}, failed {p.hits_failed:,})"
        )
        if obj.is_active:
            text += f" · ETA {p.eta}" + (" · interrupted: no worker is sending" if p.stalled else "")
        return text

    @admin.display(description="confirmation")
    def confirm_link(self, obj: BackfillPlan) -> str:
        if obj.pk is None:
            return ""
        if obj.can_confirm():
            url = reverse("backfill:confirm", args=[obj.pk])
            return format_html('<a class="button" href="{}">Review the estimate and confirm…</a>', url)
        if obj.confirmed_at:
            return f"Confirmed by {obj.confirmed_by_name} at {obj.confirmed_at:%Y-%m-%d %H:%M:%S}"
        return "Not confirmed"

    @admin.display(description="estimate (as confirmed)")
    def estimate_summary(self, obj: BackfillPlan) -> str:
        from backfill.planning import Estimate

        estimate = Estimate.from_json(obj.estimate)
        if estimate is None:
            url = reverse("backfill:detail", args=[obj.pk]) if obj.pk else ""
            return format_html('See the <a href="{}">plan page</a> for the current estimate.', url) if url else ""
        return f"{estimate.summary_text()} {estimate.hits_basis}"

    @admin.action(description="Cancel selected plans", permissions=["run_backfill"])
    def cancel_plans(self, request: HttpRequest, queryset) -> None:
        cancelled = sum(plan.cancel(by=request.user) for plan in queryset)
        self.message_user(request, f"{cancelled} plan(s) cancelled.", messages.SUCCESS if cancelled else messages.INFO)

    @admin.action(description="Run again (copy into a new draft)", permissions=["add"])
    def run_again(self, request: HttpRequest, queryset) -> None:
        copies = [plan.clone(by=request.user) for plan in queryset]
        self.message_user(request, f"New draft(s): {', '.join(str(copy.pk) for copy in copies)}.", messages.SUCCESS)

    def has_run_backfill_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("backfill.run_backfill")
