from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from funnels.forms import PreviewForm
from funnels.models import Funnel
from funnels.preview import build_preview
from trafficinator.http import HtmxHttpRequest


@require_GET
@permission_required("funnels.view_funnel", raise_exception=True)
def funnel_list(request: HtmxHttpRequest) -> HttpResponse:
    """Every funnel with its preview: the way to the previews for users who may view
    funnels but not open the admin, where staff edit them."""
    funnels = Funnel.objects.prefetch_related("steps", "presets")
    return render(request, "funnels/list.html", {"funnels": funnels})


@require_GET
@permission_required("funnels.view_funnel", raise_exception=True)
def preview(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Simulate N journeys through the funnel and show one sample journey's hits.

    The form submits with htmx and gets only ``_preview_results.html`` back; the full
    page includes the same partial. A GET without parameters uses the defaults."""
    funnel = get_object_or_404(Funnel.objects.prefetch_related("steps", "presets"), pk=pk)
    form = PreviewForm(request.GET or PreviewForm.DEFAULTS)
    values = form.values()
    result = build_preview(funnel, *values) if values and funnel.steps.all() else None
    context = {"funnel": funnel, "form": form, "preview": result}
    # A history restore asks with HX-Request too, but needs the whole page.
    partial = bool(request.htmx) and not request.htmx.history_restore_request
    template = "funnels/_preview_results.html" if partial else "funnels/preview.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response
