"""The base views: the home page and a health check for load balancers."""

from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from presets.models import Preset
from runs.forms import StartRunForm
from runs.views import dashboard_context
from targets.models import Target


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: live runs (refreshed by runs:dashboard), the start form, configuration."""
    context: dict[str, Any] = {
        "targets": Target.objects.order_by("name"),
        "presets": Preset.objects.order_by("-is_builtin", "visits_per_day", "name"),
    }
    if request.user.has_perm("runs.view_run"):
        context.update(dashboard_context())
    if request.user.has_perm("runs.run_traffic"):
        form = StartRunForm()
        context.update(start_form=form, estimate=form.estimate())
    return render(request, "home.html", context)


@login_not_required
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Answers 200 when the database answers; no login so a load balancer can call it."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any DB failure means unhealthy; say which
        return JsonResponse({"status": "error", "database": type(exc).__name__}, status=503)
    return JsonResponse({"status": "ok"})
