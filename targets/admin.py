from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from targets.checks import run_check
from targets.forms import TargetForm
from targets.models import Target
from targets.prepare import prepare_site
from trafficinator.traffic import Catalog

# Written by the connection check only, so shown read-only.
LEARNED_FIELDS = (
    "site_name",
    "site_timezone",
    "site_currency",
    "matomo_version",
    "token_can_write",
    "token_secure_only",
    "site_goals",
    "site_ecommerce",
    "site_search",
    "last_checked_at",
    "last_check_ok",
    "last_check_message",
)


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    form = TargetForm
    change_form_template = "admin/targets/target/change_form.html"
    list_display = ["name", "matomo_url", "site_id", "enabled", "token_set", "check_badge", "last_checked_at"]
    list_filter = ["enabled", "last_check_ok"]
    search_fields = ["name", "matomo_url", "site_name"]
    actions = ["check_connection", "prepare_site_for_catalog"]
    fieldsets = [
        (
            None,
            {"fields": ["name", "matomo_url", "site_id", "token_auth", "clear_token", "enabled", "check_after_saving"]},
        ),
        ("Learned from Matomo", {"fields": LEARNED_FIELDS}),
    ]
    readonly_fields = LEARNED_FIELDS

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not obj.token_auth:
            # "Remove the stored token" only exists when there is one (see TargetForm).
            main = [f for f in fieldsets[0][1]["fields"] if f != "clear_token"]
            fieldsets = [(None, {"fields": main}), *fieldsets[1:]]
        return fieldsets

    def save_model(self, request: HttpRequest, obj: Target, form, change: bool) -> None:
        """Save, then check the connection (unless unticked), like `target add --check`:
        a new target shows at once whether Matomo answers and what it learned."""
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("check_after_saving"):
            self._report(request, obj)

    @admin.display(boolean=True, description="token")
    def token_set(self, obj: Target) -> bool:
        return obj.has_token

    @admin.display(description="last check", ordering="last_check_ok")
    def check_badge(self, obj: Target) -> str:
        colour = {"ok": "#2e7d32", "failed": "#c62828"}.get(obj.check_status, "#757575")
        return format_html(
            '<span style="color:{}" title="{}">{}</span>', colour, obj.last_check_message, obj.check_status
        )

    # A check sends the stored token to the Matomo URL: only users who may change
    # targets may do that (view-only users do not get the action).
    @admin.action(description="Check connection to Matomo", permissions=["change"])
    def check_connection(self, request: HttpRequest, queryset) -> None:
        for target in queryset:
            self._report(request, target)

    # Sends the token and changes the Matomo site: like a check, change permission only.
    @admin.action(
        description="Create the catalog's goals and turn on ecommerce and site search in Matomo",
        permissions=["change"],
    )
    def prepare_site_for_catalog(self, request: HttpRequest, queryset) -> None:
        """Changes the Matomo site (with the target's token): only on this explicit request."""
        catalog = Catalog.load_default()
        for target in queryset:
            result = prepare_site(target, catalog)
            done = "; ".join(result.done) or "nothing was missing"
            if result.ok:
                self.message_user(request, f"{target.name}: {done}.", messages.SUCCESS)
            else:
                self.message_user(request, f"{target.name}: {' '.join(result.problems)} (done: {done})", messages.ERROR)

    def _report(self, request: HttpRequest, target: Target) -> None:
        result = run_check(target)
        level = messages.SUCCESS if result.ok else messages.ERROR
        self.message_user(request, f"{target.name}: {result.message}", level)

    def get_urls(self):
        custom = [
            path(
                "<int:object_id>/check/",
                self.admin_site.admin_view(self.check_view),
                name="targets_target_check",
            )
        ]
        return custom + super().get_urls()

    def check_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """The "Check connection" button on a target's page (a POST form)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        target = get_object_or_404(Target, pk=object_id)
        if not self.has_change_permission(request, target):
            raise PermissionDenied
        self._report(request, target)
        return HttpResponseRedirect(reverse("admin:targets_target_change", args=[object_id]))
