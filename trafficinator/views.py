"""The base views: the home page and the health checks."""

from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from presets.models import Preset
from runs.forms import StartRunForm
from runs.views import dashboard_context
from targets.models import Target
from trafficinator.health import check_database
from trafficinator.health import report as health_report


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: live runs (refreshed by runs:dashboard), the start form, configuration."""
    # Targets (names, Matomo URLs, check messages) and presets are listed only to users
    # who may view them; a user without those permissions sees the rest of the page.
    context: dict[str, Any] = {}
    if request.user.has_perm("targets.view_target"):
        context["targets"] = Target.objects.order_by("name")
    if request.user.has_perm("presets.view_preset"):
        context["presets"] = Preset.objects.order_by("-is_builtin", "visits_per_day", "name")
    if request.user.has_perm("runs.view_run"):
        context.update(dashboard_context())
    if request.user.has_perm("runs.run_traffic"):
        form = StartRunForm()
        context.update(start_form=form, estimate=form.estimate())
    return render(request, "home.html", context)


@login_not_required
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """The whole system for monitoring: database, broker, worker clusters per queue, queue
    depth, loader slots. 503 when something a run needs is down. No login, so monitors
    and load balancers can call it (see trafficinator.health)."""
    healthy, body = health_report()
    return JsonResponse(body, status=200 if healthy else 503)


@login_not_required
@require_GET
def health_web(request: HttpRequest) -> JsonResponse:
    """This web process can serve pages: it answers and reaches its database. For
    container and Kubernetes probes, which must not restart the web because a worker is
    down."""
    database = check_database()
    return JsonResponse(
        {"status": "ok" if database["ok"] else "error", "database": database}, status=200 if database["ok"] else 503
    )


@login_not_required
@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico where a page names no icon (a JSON answer, an error)."""
    return redirect(static("favicon.svg"), permanent=True)
