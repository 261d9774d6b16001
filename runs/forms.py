"""The start-a-run form and the estimate shown beside it while the user fills it in."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from backfill.models import BackfillPlan
from presets.models import Preset
from runs.models import MAX_SHARDS, MAX_VISITS
from runs.shards import (
    HITS_SAMPLE_VISITS,
    ShardPlan,
    describe,
    free_loader_slots,
    parse_shards,
    plan_shards,
    resolve_shards,
    sample_hits_per_visit,
)
from targets.models import Target
from trafficinator.thresholds import ThresholdError, parse_many

SECONDS_PER_DAY = 86_400

# Run model fields whose validation errors belong to a differently named form field.
_FORM_FIELD_FOR = {"duration_seconds": "duration_minutes"}


class TargetChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Target) -> str:
        return obj.name if obj.has_token else f"{obj.name} (no token)"


class StartRunForm(forms.Form):
    targets = TargetChoiceField(
        queryset=Target.objects.enabled().order_by("name"),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one target."},
    )
    preset = forms.ModelChoiceField(queryset=Preset.objects.all(), empty_label=None)
    visits_per_day = forms.IntegerField(
        label="Visits per day", required=False, min_value=1, max_value=50_000_000, help_text="Blank: the preset's."
    )
    duration_minutes = forms.IntegerField(
        label="Duration (minutes)",
        required=False,
        min_value=1,
        max_value=settings.MAX_RUN_HOURS * 60,
        help_text="Blank: the preset's auto-stop, or until stopped.",
    )
    max_visits = forms.IntegerField(
        label="Visit limit",
        required=False,
        min_value=1,
        max_value=MAX_VISITS,
        help_text="Blank: the preset's, or no limit.",
    )
    bulk = forms.BooleanField(label="Bulk", required=False, help_text="Send whole visits in bulk batches.")
    shards = forms.CharField(
        label="Shards",
        required=False,
        initial="1",
        max_length=4,
        help_text=f"Loader processes sharing the run, 1 to {MAX_SHARDS}, or “auto” (from the expected hits/s).",
    )
    without_countries = forms.BooleanField(
        label="Send without countries",
        required=False,
        help_text="For targets without a token when the preset sends visitor countries: their visits then all "
        "come from this server's IP (one country, or Unknown, in Matomo).",
    )

    thresholds = forms.CharField(
        label="Thresholds",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "p95_ms < 500\nsuccess_rate >= 0.99"}),
        help_text="Pass/fail criteria judged at the end, one per line. Blank: the preset's; “none”: no thresholds.",
    )
    abort_on_fail = forms.BooleanField(
        label="Stop when a threshold fails",
        required=False,
        help_text="Stop as soon as a threshold has certainly failed (a count past its limit, e.g. rejected == 0), "
        "instead of at the end. Needs at least one such threshold: rates and latencies are judged at the end.",
    )

    def clean(self) -> dict:
        data = super().clean() or {}
        preset, targets = data.get("preset"), data.get("targets")
        if preset is not None and targets:
            without_token = countries_without_token(preset, list(targets))
            if without_token and not data.get("without_countries"):
                self.add_error(
                    "without_countries",
                    f"The preset sends visitor countries, which Matomo accepts only with a token; "
                    f"{', '.join(without_token)} {'has' if len(without_token) == 1 else 'have'} none. Add a token "
                    "to the target, or tick “Send without countries”.",
                )
        return data

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound and "targets" not in self.initial:
            self.initial["targets"] = Target.objects.enabled().only_choice()

    def clean_shards(self) -> int | str:
        text = self.cleaned_data.get("shards", "").strip() or "1"
        try:
            return parse_shards(text)
        except ValueError as error:
            raise ValidationError(str(error)) from None

    def clean_thresholds(self) -> list[str] | None:
        """None (the preset's), [] ("none") or the checked lines."""
        text = self.cleaned_data.get("thresholds", "").strip()
        if not text:
            return None
        if text.lower() == "none":
            return []
        try:
            return [threshold.text for threshold in parse_many(text)]
        except ThresholdError as error:
            raise ValidationError(str(error)) from None

    def add_model_errors(self, error: ValidationError) -> None:
        """Show a model's ValidationError (from Run.objects.create_run) next to the fields."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error)
            return
        for name, errors in error.error_dict.items():
            field = _FORM_FIELD_FOR.get(name, name)
            self.add_error(field if field in self.fields else None, errors)

    def run_options(self) -> dict:
        """Keyword arguments for Run.objects.create_run from the cleaned data."""
        data = self.cleaned_data
        minutes = data.get("duration_minutes")
        return {
            "preset": data["preset"],
            "targets": list(data["targets"]),
            "visits_per_day": data.get("visits_per_day"),
            "duration_seconds": minutes * 60 if minutes else None,
            "max_visits": data.get("max_visits"),
            "bulk": bool(data.get("bulk")),
            "thresholds": data.get("thresholds"),
            "abort_on_fail": bool(data.get("abort_on_fail")),
            "shards": resolve_shards(
                data["preset"], data.get("visits_per_day"), bool(data.get("bulk")), data.get("shards") or 1
            ),
        }

    def estimate(self) -> RunEstimate | None:
        """What the valid part of the form would do (an unbound form: its first preset)."""
        if self.is_bound:
            self.is_valid()
            data = self.cleaned_data
        else:
            chosen = self.initial.get("targets") or []
            data = {"preset": Preset.objects.first(), "targets": list(Target.objects.filter(pk__in=chosen))}
        preset = data.get("preset")
        if preset is None:
            return None
        minutes = data.get("duration_minutes")
        hours = preset.auto_stop_after_hours
        return RunEstimate(
            preset=preset,
            targets=list(data.get("targets") or []),
            visits_per_day=data.get("visits_per_day") or preset.visits_per_day,
            duration_seconds=minutes * 60 if minutes else (round(hours * 3600) if hours else None),
            max_visits=data.get("max_visits") or preset.auto_stop_after_visits,
            bulk=bool(data.get("bulk")),
            shards=data.get("shards") or 1,
        )


def countries_without_token(preset: Preset, targets: list[Target]) -> list[str]:
    """Targets that would get the preset's visitor countries dropped (no token for `cip`)."""
    if not preset.randomize_countries:
        return []
    return [target.name for target in targets if not target.has_token]


@dataclass(frozen=True)
class RunEstimate:
    preset: Preset
    targets: list[Target]
    visits_per_day: int
    duration_seconds: int | None
    max_visits: int | None
    bulk: bool = False
    shards: int | str = 1

    @cached_property
    def shard_plan(self) -> ShardPlan:
        return plan_shards(self.preset, self.visits_per_day, self.bulk, self.shards, self.hits_per_visit)

    @property
    def shard_note(self) -> str:
        """How many loader slots the run needs at its peak, and how many are free now."""
        return describe(self.shard_plan, free_loader_slots())

    @cached_property
    def hits_per_visit(self) -> float:
        """From the traffic model itself (runs.shards.sample_hits_per_visit), not a formula."""
        return sample_hits_per_visit(self.preset)

    @property
    def sample_visits(self) -> int:
        return HITS_SAMPLE_VISITS

    @property
    def visits_per_second(self) -> float:
        return self.visits_per_day / SECONDS_PER_DAY

    @property
    def hits_per_second(self) -> float:
        """The day's average; the daily curve makes the busiest hours higher."""
        return self.visits_per_second * self.hits_per_visit

    @property
    def total_visits(self) -> int | None:
        """Visits until the run stops by itself; None when it runs until stopped."""
        by_time = round(self.visits_per_second * self.duration_seconds) if self.duration_seconds else None
        limits = [value for value in (by_time, self.max_visits) if value]
        return min(limits) if limits else None

    @property
    def total_hits(self) -> int | None:
        return round(self.total_visits * self.hits_per_visit) if self.total_visits else None

    @property
    def returning_note(self) -> str:
        """What returning-visit share Matomo will report, and why."""
        share = round(self.preset.returning_visitor_share * 100)
        if not share:
            return "Matomo will report no returning visits: the preset's returning share is 0."
        continued = [t.name for t in self.targets if BackfillPlan.objects.population_for(t, self.preset) is not None]
        if continued and len(continued) == len(self.targets):
            return (
                f"Matomo will report about {share}% returning visits from the start: returning visitors continue "
                f"those of the latest backfill of {', '.join(continued)} with this preset, whom Matomo already knows."
            )
        return (
            f"Matomo will report about {share}% returning visits once the run has been going for a while: it counts "
            "a visit as returning only when it knows the visitor from an earlier visit, so the first returning "
            "visitors are people who came earlier in this run. A backfill of the same target and preset first makes "
            "its visitors known, and a run after it continues them."
        )

    @property
    def timezone_warnings(self) -> list[str]:
        """Targets whose stored site time zone this machine does not know (their daily
        curve then follows the preset's zone): the warning for each."""
        warnings = ((target.name, target.timezone_warning(self.preset.timezone)) for target in self.targets)
        return [f"{name}: {warning}" for name, warning in warnings if warning]

    @property
    def needs_token(self) -> bool:
        """Visitor countries are sent as `cip`, which Matomo accepts only with a token."""
        return self.preset.randomize_countries

    @property
    def targets_without_token(self) -> list[str]:
        return [target.name for target in self.targets if not target.has_token]

    @property
    def targets_token_cannot_write(self) -> list[str]:
        return [target.name for target in self.targets if target.has_token and target.token_can_write is False]
