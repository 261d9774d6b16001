from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from presets.models import PresetSnapshot
from runs.models import Run, RunLog, RunTarget
from trafficinator.lifecycle import actor


class RunTargetInline(admin.TabularInline):
    model = RunTarget
    extra = 0
    fields = ["target", "weight", "visits_per_day"]

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None or obj.is_editable


class RunLogInline(admin.TabularInline):
    model = RunLog
    extra = 0
    fields = readonly_fields = ("created_at", "level", "target", "message")
    can_delete = False
    ordering = ["-created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


RECORDED_FIELDS = [
    "preset_name",
    "status",
    "stop_requested",
    "end_reason",
    "seed",
    "created_by",
    "created_at",
    "started_at",
    "heartbeat_at",
    "finished_at",
    "shard_count",
    "shard_summary",
    "stats",
    "profile",
    "thresholds",
    "outcome",
    "threshold_results",
]


class RunAdminForm(forms.ModelForm):
    class Meta:
        model = Run
        fields = ["preset", "visits_per_day", "duration_seconds", "max_visits", "daily_cap", "bulk", "batch_size"]

    def clean(self):
        """The run may have been picked up by a loader since the page was opened."""
        cleaned = super().clean()
        status = Run.objects.filter(pk=self.instance.pk).values_list("status", flat=True).first()
        if self.instance.pk and status != Run.Status.QUEUED:
            raise ValidationError(
                f"Run {self.instance.pk} is {Run.Status(status).label.lower() if status else 'gone'} now: "
                "only a queued run can be changed. Nothing was saved."
            )
        return cleaned


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    form = RunAdminForm
    list_display = [
        "id",
        "preset_name",
        "status_label",
        "outcome",
        "visits_per_day",
        "created_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "outcome", "bulk"]
    search_fields = ["preset_name", "end_reason"]
    inlines = [RunTargetInline, RunLogInline]
    actions = ["stop_runs", "resume_lost_runs", "close_lost_runs"]
    # The run's request (editable while queued) and what the loader recorded (read-only).
    fields = [
        "preset",
        "visits_per_day",
        "duration_seconds",
        "max_visits",
        "daily_cap",
        "bulk",
        "batch_size",
        *RECORDED_FIELDS,
    ]
    readonly_fields = RECORDED_FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Runs are started from the dashboard or `run_traffic`, which snapshot the preset.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        """Only a queued run's request can be edited; a started or finished run is shown
        read-only, and a POST to its change page is refused (403)."""
        if obj is not None and not obj.is_editable:
            return False
        return request.user.has_perm("runs.run_traffic") and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Run, form, change: bool) -> None:
        """Save a queued run's edits with a conditional UPDATE (never over a run a loader
        has claimed meanwhile); a new preset also renews the snapshot the loader reads."""
        changed = list(form.changed_data)
        if "preset" in changed and obj.preset is not None:
            obj.preset_name = obj.preset.name
            obj.profile = PresetSnapshot.of(obj.preset).as_json()
        values = {name: getattr(obj, name) for name in (*changed, "preset_name", "profile") if name != "preset"}
        if "preset" in changed:
            values["preset"] = obj.preset
        if not Run.objects.filter(pk=obj.pk, status=Run.Status.QUEUED).update(**values):
            self.message_user(request, f"Run {obj.pk} was picked up meanwhile: nothing was saved.", messages.ERROR)
            return
        if changed:
            detail = f"preset {obj.preset_name} (snapshot renewed)" if "preset" in changed else ""
            fields = ", ".join(name for name in changed if name != "preset")
            what = "; ".join(part for part in (detail, fields) if part)
            obj.log(RunLog.Level.INFO, f"Edited by {actor(request.user)} in the admin: {what}.")

    @admin.display(description="shards")
    def shard_summary(self, obj: Run) -> str:
        """Each loader of the run: where it runs and how it stands (RunShard rows)."""
        return "; ".join(
            f"{shard.label} {shard.get_status_display().lower()}"
            + (f" on {shard.loader_host} pid {shard.loader_pid}" if shard.loader_host else "")
            + (f", claimed {shard.claim_epoch}x" if shard.claim_epoch > 1 else "")
            for shard in obj.shard_list()
        )

    @admin.display(description="status", ordering="status")
    def status_label(self, obj: Run) -> str:
        return "lost (no heartbeat)" if obj.is_lost() else obj.get_status_display()

    def _check_permission(self, request: HttpRequest) -> bool:
        if not request.user.has_perm("runs.run_traffic"):
            self.message_user(request, "You need the “run traffic” permission.", messages.ERROR)
            return False
        return True

    @admin.action(description="Stop selected runs")
    def stop_runs(self, request: HttpRequest, queryset) -> None:
        if not self._check_permission(request):
            return
        stopped = sum(run.request_stop(by=request.user) for run in queryset)
        self.message_user(request, f"Asked {stopped} run(s) to stop.", messages.SUCCESS)

    @admin.action(description="Resume selected lost runs")
    def resume_lost_runs(self, request: HttpRequest, queryset) -> None:
        if not self._check_permission(request):
            return
        resumed = sum(run.resume(by=request.user) for run in queryset)
        self.message_user(request, f"Resumed {resumed} lost run(s).", messages.SUCCESS)

    @admin.action(description="Close selected lost runs")
    def close_lost_runs(self, request: HttpRequest, queryset) -> None:
        if not self._check_permission(request):
            return
        closed = sum(run.close_lost(by=request.user) for run in queryset)
        self.message_user(request, f"Closed {closed} lost run(s).", messages.SUCCESS)
