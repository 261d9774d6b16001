from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from presets.forms import PresetForm
from presets.models import Preset


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    form = PresetForm
    list_display = [
        "name",
        "is_builtin",
        "visits_per_day",
        "concurrency",
        "pageviews_min",
        "pageviews_max",
        "ecommerce_probability",
        "currency",
        "timezone",
    ]
    list_filter = ["is_builtin", "daily_curve"]
    search_fields = ["name", "description"]
    actions = ["duplicate_presets"]
    save_as = True
    fieldsets = [
        (None, {"fields": ["name", "description", "is_builtin"]}),
        (
            "Volume and pacing",
            {
                "fields": [
                    "visits_per_day",
                    ("pageviews_min", "pageviews_max"),
                    ("visit_duration_min", "visit_duration_max"),
                    ("pause_min", "pause_max"),
                    "concurrency",
                    "daily_curve",
                ]
            },
        ),
        ("Limits", {"fields": ["auto_stop_after_hours", "auto_stop_after_visits", "daily_cap"]}),
        ("Thresholds", {"fields": ["thresholds"]}),
        (
            "Behaviour",
            {
                "fields": [
                    "site_search_probability",
                    "outlinks_probability",
                    "downloads_probability",
                    "click_events_probability",
                    "random_events_probability",
                    "ecommerce_probability",
                    "direct_traffic_share",
                    "bounce_share",
                    "returning_visitor_share",
                    "logged_in_share",
                    "randomize_countries",
                ]
            },
        ),
        (
            "Ecommerce",
            {
                "fields": [
                    ("ecommerce_order_value_min", "ecommerce_order_value_max"),
                    ("ecommerce_items_min", "ecommerce_items_max"),
                    "ecommerce_tax_rate",
                    "ecommerce_shipping_options",
                    "currency",
                ]
            },
        ),
        (
            "Realism",
            {
                "fields": [
                    "device_mix",
                    "persona_mix",
                    "channel_mix",
                    "campaign_param_style",
                    "cart_abandonment_probability",
                    "goal_probability",
                    "content_impressions_probability",
                    "page_performance",
                    "client_hints",
                ]
            },
        ),
        (
            "Content catalog",
            {
                "fields": ["site_url", "pages_text", "pages_file", "pages_mode", "events_json", "catalog_overrides"],
                "description": "Leave empty to use the default catalog (2,000 pages of a demo shop, search terms, "
                "events, products, referrers, countries, browsers). Other parts can be replaced or extended in the "
                "JSON: see README “Content catalog”.",
            },
        ),
        ("Time", {"fields": ["timezone"]}),
    ]
    readonly_fields = ["is_builtin"]

    def get_fieldsets(self, request: HttpRequest, obj: Preset | None = None):
        """A built-in is shown read-only: without the form's helper fields (site URL, URL
        list, events), which have no stored value and read as a literal "None" there."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not obj.is_builtin:
            return fieldsets
        helpers = set(PresetForm.declared_fields)
        return [
            (name, {**options, "fields": [field for field in options["fields"] if field not in helpers]})
            for name, options in fieldsets
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None) -> HttpResponse:
        """ "Save as new" on a built-in makes its custom copy. The built-in's page is
        read-only, so its form posts no fields: the admin's own save-as-new would answer
        "This field is required" for every one of them."""
        if request.method == "POST" and "_saveasnew" in request.POST:
            preset = self.get_object(request, unquote(object_id))
            if preset is not None and preset.is_builtin:
                if not self.has_add_permission(request):
                    raise PermissionDenied
                copy = preset.duplicate()
                self.log_addition(request, copy, [{"added": {}}])
                message = f"Created custom preset “{copy.name}” from “{preset.name}”: edit it below."
                self.message_user(request, message, messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:presets_preset_change", args=[copy.pk]))
        return super().change_view(request, object_id, form_url, extra_context)

    def has_change_permission(self, request: HttpRequest, obj: Preset | None = None) -> bool:
        # Built-ins are shown read-only; "Duplicate" makes an editable copy.
        if obj is not None and obj.is_builtin:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Preset | None = None) -> bool:
        if obj is not None and obj.is_builtin:
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        builtin = queryset.filter(is_builtin=True)
        if builtin.exists():
            self.message_user(request, "Built-in presets were left alone: they cannot be deleted.", messages.WARNING)
        super().delete_queryset(request, queryset.filter(is_builtin=False))

    @admin.action(description="Duplicate into a custom preset", permissions=["add"])
    def duplicate_presets(self, request: HttpRequest, queryset) -> None:
        for preset in queryset:
            copy = preset.duplicate()
            self.message_user(request, f"Created custom preset “{copy.name}” from “{preset.name}”.", messages.SUCCESS)
