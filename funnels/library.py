"""Funnel templates: ready-made journeys, kept as data in ``funnels/data/templates.json``.

The file has the import/export format, so a template is created through the same
validation as any import. New funnels from a template start disabled: they can never
push a preset's funnel shares above 100 %, and the user enables them after a look.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from django.utils.text import slugify

from funnels.kinds import StepKind
from funnels.models import Funnel
from funnels.transfer import FORMAT, VERSION, import_funnels

TEMPLATES_FILE = Path(__file__).resolve().parent / "data" / "templates.json"


@dataclass(frozen=True)
class FunnelTemplate:
    key: str
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def description(self) -> str:
        return self.data.get("description", "")

    @property
    def step_labels(self) -> list[str]:
        return [StepKind(step["kind"]).label for step in self.data["steps"]]

    @property
    def share(self) -> float:
        return self.data.get("share", 0)


@cache
def templates() -> tuple[FunnelTemplate, ...]:
    data = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    return tuple(FunnelTemplate(slugify(entry["name"]), entry) for entry in data["funnels"])


def get_template(key: str) -> FunnelTemplate | None:
    return next((template for template in templates() if template.key == key), None)


def available_name(base: str) -> str:
    name, number = base, 2
    while Funnel.objects.filter(name=name).exists():
        name = f"{base} ({number})"
        number += 1
    return name


def create_from_template(key: str) -> Funnel:
    """A new, disabled funnel with the template's steps (named "Name (2)" etc. if taken)."""
    template = get_template(key)
    if template is None:
        raise KeyError(f"No funnel template “{key}”.")
    entry = copy.deepcopy(template.data)
    entry.update(name=available_name(template.name), enabled=False)
    import_funnels({"format": FORMAT, "version": VERSION, "funnels": [entry]})
    return Funnel.objects.get(name=entry["name"])
