from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest

from runs.models import Run, RunLog, RunTarget


class RunTargetInline(admin.TabularInline):
    model = RunTarget
    extra = 0
    fields = ["target", "weight", "visits_per_day"]

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None or obj.status == Run.Status.QUEUED


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
    "loader_pid",
    "loader_host",
    "stats",
    "profile",
    "thresholds",
    "outcome",
    "threshold_results",
]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
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
        return request.user.has_perm("runs.run_traffic") and super().has_change_permission(request, obj)

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
        resumed = sum(run.resume() for run in queryset)
        self.message_user(request, f"Resumed {resumed} lost run(s).", messages.SUCCESS)

    @admin.action(description="Close selected lost runs")
    def close_lost_runs(self, request: HttpRequest, queryset) -> None:
        if not self._check_permission(request):
            return
        closed = sum(run.close_lost(by=request.user) for run in queryset)
        self.message_user(request, f"Closed {closed} lost run(s).", messages.SUCCESS)
