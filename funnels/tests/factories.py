"""Plain factories for funnel tests (the trafficinator.testing style): make_* returns saved,
validated objects."""

from __future__ import annotations

from decimal import Decimal
from itertools import count

from funnels.models import Funnel, FunnelStep

_sequence = count(1)


def make_step(kind: str = "pageview", **fields) -> FunnelStep:
    """An unsaved, valid-looking step; pageviews get a URL unless one is given."""
    if kind == "pageview":
        fields.setdefault("url", f"/page-{next(_sequence)}")
    return FunnelStep(kind=kind, **fields)


def make_funnel(*, steps: list[FunnelStep] | None = None, presets=(), **fields) -> Funnel:
    values = {"name": f"funnel-{next(_sequence)}", "share": Decimal("0.05"), "all_presets": not presets}
    values.update(fields)
    if isinstance(values["share"], (str, float, int)):
        values["share"] = Decimal(str(values["share"]))
    funnel = Funnel(**values)
    funnel.set_pending_presets(presets)
    funnel.full_clean()
    funnel.save()
    funnel.presets.set(presets)
    steps = steps if steps is not None else [make_step(), make_step(), make_step()]
    for position, step in enumerate(steps, start=1):
        step.funnel = funnel
        step.position = step.position or position
        step.full_clean()
        step.save()
    return funnel
