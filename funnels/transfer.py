"""Funnels as JSON: export, and an import that validates everything before it writes anything.

The format (``"format": "trafficinator-funnels"``, ``"version": 1``)::

    {"format": "trafficinator-funnels", "version": 1, "funnels": [
      {"name": "Checkout", "description": "", "enabled": true, "share": 0.05, "priority": 0,
       "all_presets": false, "presets": ["Medium"],
       "steps": [{"kind": "pageview", "url": "/cart", "title": "Cart",
                  "delay_min": 0.0, "delay_max": 0.0, "continue_probability": 0.6}, ...]}]}

A step holds its kind, the kind's parameters (see ``funnels.kinds``; empty ones are
left out) and its timing. Steps are listed in order; positions are not exported.
Export → import → export gives the same text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction

from funnels.kinds import KIND_PARAMS, TIMING_COLUMNS, StepKind, key_for_column
from funnels.models import Funnel, FunnelStep, ShareClaim, share_overflows
from presets.models import Preset
from trafficinator.validation import StrictJSONError, check_json_value, loads_strict

FORMAT = "trafficinator-funnels"
VERSION = 1

_FUNNEL_KEYS = ("name", "description", "enabled", "share", "priority", "all_presets", "presets", "steps")
_STRING_COLUMNS = {
    "url",
    "title",
    "search_keyword",
    "search_category",
    "event_category",
    "event_action",
    "event_name",
    "product_sku",
    "product_name",
    "product_category",
    "content_name",
    "content_piece",
    "content_target",
    "content_interaction",
}
_WHOLE_COLUMNS = {"search_count", "goal_id"}
_NUMBER_COLUMNS = {"event_value", "delay_min", "delay_max", "continue_probability"}
_MONEY_COLUMNS = {"revenue", "product_price", "shipping", "discount"}


# --- export ----------------------------------------------------------------------


def funnel_to_dict(funnel: Funnel) -> dict[str, Any]:
    return {
        "name": funnel.name,
        "description": funnel.description,
        "enabled": funnel.enabled,
        "share": float(funnel.share),
        "priority": funnel.priority,
        "all_presets": funnel.all_presets,
        "presets": sorted(preset.name for preset in funnel.presets.all()),
        "steps": [step_to_dict(step) for step in funnel.ordered_steps()],
    }


def step_to_dict(step: FunnelStep) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": step.kind}
    for key, value in step.params().items():
        data[key] = float(value) if isinstance(value, Decimal) else value
    for column in TIMING_COLUMNS:
        data[column] = getattr(step, column)
    return data


def export_funnels(funnels: Iterable[Funnel]) -> str:
    """The JSON text for these funnels (ordered by name, so the file is stable)."""
    ordered = sorted(funnels, key=lambda funnel: funnel.name)
    data = {"format": FORMAT, "version": VERSION, "funnels": [funnel_to_dict(funnel) for funnel in ordered]}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def export_queryset(queryset) -> str:
    return export_funnels(queryset.prefetch_related("steps", "presets"))


# --- import ----------------------------------------------------------------------


class FunnelImportError(Exception):
    """Everything wrong with an import, one "path: message" line each. Nothing was saved."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)

    def summary(self, *, dry_run: bool = False) -> str:
        created = f"{len(self.created)} ({', '.join(self.created)})" if self.created else ""
        replaced = f"{len(self.replaced)} ({', '.join(self.replaced)})" if self.replaced else ""
        if dry_run:
            parts = [f"create {created}" if created else "", f"replace {replaced}" if replaced else ""]
            return "Dry run, nothing saved. Would " + " and ".join(p for p in parts if p) + "."
        parts = [f"created {created}" if created else "", f"replaced {replaced}" if replaced else ""]
        text = "; ".join(p for p in parts if p)
        return "Funnels " + text + "."


@dataclass
class _Planned:
    index: int
    funnel: Funnel
    preset_ids: list[int]
    steps: list[FunnelStep]
    replaces: bool


def import_funnels(source: str | bytes | dict | list, *, replace: bool = False, dry_run: bool = False) -> ImportResult:
    """Validate every funnel and step in ``source`` (JSON text or already parsed), then
    save them all in one transaction. Raises FunnelImportError listing every problem
    (and saves nothing) if anything is wrong.

    A funnel whose name exists is an error unless ``replace``, which overwrites it
    (settings, presets and steps) and keeps its id."""
    problems: list[str] = []
    data = _parse(source, problems)
    entries = _funnel_entries(data, problems)
    planned = _plan(entries, replace, problems)
    if not problems:
        problems.extend(_share_problems(planned))
    if problems:
        raise FunnelImportError(problems)
    result = ImportResult()
    for plan in planned:
        (result.replaced if plan.replaces else result.created).append(plan.funnel.name)
    if not dry_run:
        _save(planned)
    return result


def _parse(source: str | bytes | dict | list, problems: list[str]) -> Any:
    if not isinstance(source, (str, bytes)):
        problem = check_json_value(source)
        if problem:
            problems.append(f"JSON: {problem}")
            return None
        return source
    try:
        # Strict: NaN and Infinity are not JSON numbers (Python's json accepts them, and
        # an event value of Infinity would reach Matomo as e_v=inf), nor is nesting deep
        # enough to exhaust the stack.
        return loads_strict(source)
    except StrictJSONError as exc:
        problems.append(f"JSON: {exc}")
    return None


def _funnel_entries(data: Any, problems: list[str]) -> list[Any]:
    if problems:
        return []
    if isinstance(data, list):  # a bare list of funnels is fine too
        return data
    if not isinstance(data, dict):
        problems.append('file: expected an object like {"format": "trafficinator-funnels", "funnels": [...]}')
        return []
    if data.get("format", FORMAT) != FORMAT:
        problems.append(f"format: expected “{FORMAT}”, got {data.get('format')!r}")
    if data.get("version", VERSION) != VERSION:
        problems.append(f"version: this Trafficinator reads version {VERSION}, the file has {data.get('version')!r}")
    unknown = sorted(set(data) - {"format", "version", "funnels"})
    if unknown:
        problems.append(f"file: unknown key(s) {', '.join(unknown)}")
    funnels = data.get("funnels")
    if not isinstance(funnels, list):
        problems.append("funnels: expected a list of funnels")
        return []
    return funnels


def _plan(entries: list[Any], replace: bool, problems: list[str]) -> list[_Planned]:
    existing = {funnel.name: funnel for funnel in Funnel.objects.all()}
    presets = dict(Preset.objects.values_list("name", "pk"))
    seen: dict[str, int] = {}
    planned = []
    if not entries and not problems:
        problems.append("funnels: the file has no funnels")
    for index, entry in enumerate(entries):
        where = f"funnels[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        before = len(problems)
        plan = _plan_funnel(index, entry, existing, presets, replace, problems)
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"{where}.name: “{name}” is also the name of funnels[{seen[name]}]")
            seen.setdefault(name, index)
        if plan is not None and len(problems) == before:
            planned.append(plan)
    return planned


def _plan_funnel(
    index: int, entry: dict, existing: dict[str, Funnel], presets: dict[str, int], replace: bool, problems: list[str]
) -> _Planned | None:
    where = f"funnels[{index}]"
    unknown = sorted(set(entry) - set(_FUNNEL_KEYS))
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; a funnel has {', '.join(_FUNNEL_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: a funnel needs a name (text)")
        return None
    old = existing.get(name)
    if old is not None and not replace:
        problems.append(f"{where}.name: a funnel named “{name}” already exists (import with replace to overwrite it)")
    # Replacing keeps the row (its id and creation time); nothing is saved before _save().
    funnel = old if old is not None and replace else Funnel(name=name)
    checks = {
        "description": (str, "text", ""),
        "enabled": (bool, "true or false", True),
        "priority": (int, "a whole number", 0),
    }
    for key, (kind, label, default) in checks.items():
        value = entry.get(key, default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{where}.{key}: must be {label}")
        else:
            setattr(funnel, key, value)
    share = entry.get("share", Funnel._meta.get_field("share").default)
    money = _money(share)
    if money is None:
        problems.append(f"{where}.share: must be a number from 0 to 1")
    else:
        funnel.share = money
    preset_ids = _preset_ids(entry.get("presets", []), presets, f"{where}.presets", problems)
    all_presets = entry.get("all_presets", not preset_ids)
    if not isinstance(all_presets, bool):
        problems.append(f"{where}.all_presets: must be true or false")
    else:
        funnel.all_presets = all_presets
    funnel.set_pending_presets(preset_ids)
    funnel.check_share_total = False  # done for the whole file at once, see _share_problems()
    try:
        funnel.full_clean(
            exclude=[] if funnel.share is not None else ["share"], validate_unique=False, validate_constraints=False
        )
    except ValidationError as exc:
        problems.extend(_paths(where, exc, lambda column: column))
    steps = _plan_steps(entry.get("steps"), f"{where}.steps", problems)
    return _Planned(index, funnel, preset_ids, steps, replaces=old is not None)


def _preset_ids(raw: Any, presets: dict[str, int], where: str, problems: list[str]) -> list[int]:
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list of preset names")
        return []
    ids = []
    for number, name in enumerate(raw):
        if isinstance(name, str) and name in presets:
            ids.append(presets[name])
        else:
            known = ", ".join(sorted(presets)) or "none"
            problems.append(
                f"{where}[{number}]: no preset named {json.dumps(name, ensure_ascii=False)} (known: {known})"
            )
    return ids


def _plan_steps(raw: Any, where: str, problems: list[str]) -> list[FunnelStep]:
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list of steps")
        return []
    steps = []
    for number, entry in enumerate(raw):
        step = _plan_step(entry, f"{where}[{number}]", problems)
        if step is not None:
            step.position = number + 1
            steps.append(step)
    if len(steps) == len(raw):
        try:
            Funnel.validate_steps(steps)
        except ValidationError as exc:
            problems.extend(f"{where}: {message}" for message in exc.messages)
    return steps


def _plan_step(entry: Any, where: str, problems: list[str]) -> FunnelStep | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object")
        return None
    kind = entry.get("kind")
    if kind not in KIND_PARAMS:
        problems.append(f"{where}.kind: {json.dumps(kind)} is not a step kind; use one of {', '.join(StepKind.values)}")
        return None
    params = {param.key: param.column for param in KIND_PARAMS[kind]}
    allowed = ["kind", *params, *TIMING_COLUMNS]
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {', '.join(unknown)} (steps of kind “{kind}” take {', '.join(allowed)})"
        )
    step = FunnelStep(kind=kind, position=1)
    mistyped = set()
    for key, value in entry.items():
        column = params.get(key, key if key in TIMING_COLUMNS else None)
        if column is None:
            continue
        converted, message = _convert(column, value)
        if message:
            problems.append(f"{where}.{key}: {message}")
            mistyped.add(column)
        else:
            setattr(step, column, converted)
    try:
        step.full_clean(exclude=["funnel", *mistyped])
    except ValidationError as exc:
        # A mistyped value was left out and has been reported; don't also call it missing.
        errors = {column: messages for column, messages in exc.message_dict.items() if column not in mistyped}
        problems.extend(_paths(where, ValidationError(errors), lambda column: key_for_column(kind, column)))
        return None
    return None if mistyped else step


def _convert(column: str, value: Any) -> tuple[Any, str]:
    """The value for a column, or an error message, checking JSON types strictly (an
    integer column must not quietly turn 1.5 into 1)."""
    if value is None:
        if column in TIMING_COLUMNS:
            return None, "must be a number"
        return (None if column not in _STRING_COLUMNS and column != "items" else ""), ""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if column in _STRING_COLUMNS:
        return (value, "") if isinstance(value, str) else (None, "must be text")
    if column in _WHOLE_COLUMNS:
        return (value, "") if is_number and isinstance(value, int) else (None, "must be a whole number")
    if column in _NUMBER_COLUMNS:
        if not is_number:
            return None, "must be a number"
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        return (number, "") if math.isfinite(number) else (None, "must be a finite number")
    if column in _MONEY_COLUMNS:
        amount = _money(value)
        return (amount, "") if amount is not None else (None, "must be an amount, e.g. 19.99")
    if column == "items":
        return (value, "") if isinstance(value, list) else (None, "must be a list of items")
    return value, ""


def _money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _paths(where: str, exc: ValidationError, key_of) -> list[str]:
    lines: list[str] = []
    for column, messages in exc.message_dict.items():
        path = where if column == NON_FIELD_ERRORS else f"{where}.{key_of(column)}"
        lines.extend(f"{path}: {message}" for message in messages)
    return lines


def _share_problems(planned: list[_Planned]) -> list[str]:
    """Share totals of the database as it will be after the import."""
    incoming = {plan.funnel.name for plan in planned}
    claims = [
        ShareClaim.of(funnel)
        for funnel in Funnel.objects.enabled().prefetch_related("presets")
        if funnel.name not in incoming
    ]
    keys = {}
    for plan in planned:
        if plan.funnel.enabled:
            key = ("import", plan.index)
            keys[key] = plan.index
            claims.append(
                ShareClaim(
                    key, plan.funnel.name, plan.funnel.share, plan.funnel.all_presets, frozenset(plan.preset_ids)
                )
            )
    preset_names = dict(Preset.objects.values_list("pk", "name"))
    problems = []
    for members, message in share_overflows(claims, preset_names, set(keys)):
        first = min(keys[claim.key] for claim in members if claim.key in keys)
        problems.append(f"funnels[{first}].share: {message}")
    return problems


@transaction.atomic
def _save(planned: list[_Planned]) -> None:
    for plan in planned:
        funnel = plan.funnel
        funnel.save()
        if plan.replaces:
            funnel.steps.all().delete()
        funnel.presets.set(plan.preset_ids)
        for step in plan.steps:
            step.funnel = funnel
            step.save()
