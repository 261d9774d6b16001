"""``{% load backfill %}{% backfill_dashboard %}``: active backfills with live progress,
for the dashboard (renders nothing for users who may not see plans, or when none runs)."""

from __future__ import annotations

from django import template

from backfill.models import BackfillPlan

register = template.Library()


@register.inclusion_tag("backfill/_dashboard.html", takes_context=True)
def backfill_dashboard(context) -> dict:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("backfill.view_backfillplan"):
        return {"plans": []}
    return {"plans": list(BackfillPlan.objects.active().order_by("created_at")), "perms": context.get("perms")}
