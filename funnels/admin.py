from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods, require_POST

from funnels.forms import FunnelForm, FunnelStepForm, FunnelStepFormSet, ImportForm
from funnels.kinds import DETAIL_COLUMNS, KIND_PARAMS
from funnels.library import create_from_template, get_template, templates
from funnels.models import Funnel, FunnelStep, percent
from funnels.transfer import FunnelImportError, export_queryset, import_funnels


class FunnelStepInline(admin.StackedInline):
    model = FunnelStep
    form = FunnelStepForm
    formset = FunnelStepFormSet
    extra = 0
    fieldsets = [
        (None, {"fields": [("position", "kind"), ("delay_min", "delay_max"), "continue_probability"]}),
        # funnels/step_kind.js shows only the fields of the chosen kind.
        ("What the step sends", {"fields": list(DETAIL_COLUMNS), "classes": ["funnel-step-details"]}),
    ]

    class Media:
        js = ["funnels/step_kind.js"]

    def get_extra(self, request: HttpRequest, obj: Funnel | None = None, **kwargs) -> int:
        return 0 if obj is not None and obj.steps.exists() else 1


@admin.register(Funnel)
class FunnelAdmin(admin.ModelAdmin):
    form = FunnelForm
    inlines = [FunnelStepInline]
    change_form_template = "admin/funnels/funnel/change_form.html"
    change_list_template = "admin/funnels/funnel/change_list.html"
    list_display = ["name", "enabled", "share_display", "priority", "applies_to", "step_count", "preview_link"]
    list_filter = ["enabled", "all_presets", "presets"]
    search_fields = ["name", "description"]
    actions = ["export_json"]
    fieldsets = [
        (None, {"fields": ["name", "description", "enabled"]}),
        ("Who follows it", {"fields": ["share", "priority", "all_presets", "presets"]}),
    ]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(step_total=Count("steps")).prefetch_related("presets")

    @admin.display(description="share", ordering="share")
    def share_display(self, obj: Funnel) -> str:
        return obj.share_percent

    @admin.display(description="used by")
    def applies_to(self, obj: Funnel) -> str:
        return obj.applies_to_label()

    @admin.display(description="steps", ordering="step_total")
    def step_count(self, obj: Funnel) -> int:
        return obj.step_total  # type: ignore[attr-defined]  # annotated by get_queryset()

    @admin.display(description="preview")
    def preview_link(self, obj: Funnel) -> str:
        return format_html('<a href="{}">Preview</a>', reverse("funnels:preview", args=[obj.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "step_kind_columns": _kind_columns()}
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "step_kind_columns": _kind_columns()}
        return super().add_view(request, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_add": self.has_add_permission(request),
            "share_totals": [(preset.name, percent(total)) for preset, total in Funnel.objects.share_totals()],
        }
        return super().changelist_view(request, extra_context)

    @admin.action(description="Export selected as JSON", permissions=["view"])
    def export_json(self, request: HttpRequest, queryset) -> HttpResponse:
        response = HttpResponse(export_queryset(queryset), content_type="application/json; charset=utf-8")
        filename = f"funnels-{timezone.now():%Y%m%d-%H%M%S}.json"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def get_urls(self):
        custom = [
            path("import/", self.admin_site.admin_view(self.import_view), name="funnels_funnel_import"),
            path("templates/", self.admin_site.admin_view(self.templates_view), name="funnels_funnel_templates"),
            path(
                "templates/<slug:key>/",
                self.admin_site.admin_view(self.create_from_template_view),
                name="funnels_funnel_from_template",
            ),
        ]
        return custom + super().get_urls()

    def _context(self, request: HttpRequest, title: str, **extra) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "changelist_url": reverse("admin:funnels_funnel_changelist"),
            **extra,
        }

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Upload or paste exported JSON. Everything is validated first; on any problem
        nothing is saved and every problem is listed with its path."""
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        return _import(request, self)

    def templates_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        return _templates(request, self)

    def create_from_template_view(self, request: HttpRequest, key: str) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        return _create_from_template(request, self, key)


# The admin views as functions, so the HTTP method decorators apply as in the other views.


@require_http_methods(["GET", "POST"])
def _import(request: HttpRequest, model_admin: FunnelAdmin) -> HttpResponse:
    problems: list[str] = []
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            result = import_funnels(form.cleaned_data["source"], replace=form.cleaned_data["replace"])
        except FunnelImportError as exc:
            problems = exc.problems
        else:
            model_admin.message_user(request, result.summary(), messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:funnels_funnel_changelist"))
    context = model_admin._context(request, "Import funnels from JSON", form=form, problems=problems)
    return TemplateResponse(request, "admin/funnels/funnel/import.html", context)


def _templates(request: HttpRequest, model_admin: FunnelAdmin) -> HttpResponse:
    context = model_admin._context(request, "Add a funnel from a template", templates=templates())
    return render(request, "admin/funnels/funnel/templates.html", context)


@require_POST
def _create_from_template(request: HttpRequest, model_admin: FunnelAdmin, key: str) -> HttpResponse:
    if get_template(key) is None:
        model_admin.message_user(request, f"There is no funnel template “{key}”.", messages.ERROR)
        return HttpResponseRedirect(reverse("admin:funnels_funnel_templates"))
    funnel = create_from_template(key)
    model_admin.message_user(
        request,
        f"Created “{funnel.name}” with {funnel.steps.count()} steps. It is disabled: check its steps and share, "
        "then enable it.",
        messages.SUCCESS,
    )
    return HttpResponseRedirect(reverse("admin:funnels_funnel_change", args=[funnel.pk]))


def _kind_columns() -> dict[str, list[str]]:
    """Which step fields each kind uses, for funnels/step_kind.js."""
    return {kind: [param.column for param in params] for kind, params in KIND_PARAMS.items()}
