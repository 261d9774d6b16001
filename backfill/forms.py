"""The plan form (new draft, edit draft; also the admin's) and the confirmation form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from backfill.models import (
    DEFAULT_REQUESTS_IN_FLIGHT,
    MAX_VISITS_PER_DAY,
    MAX_WINDOW_DAYS,
    BackfillPlan,
)
from presets.models import Preset
from targets.models import Target
from trafficinator.cli import MAX_SEED

# The plan's own settings, used as given (the window, rate, daily cap and seed are
# derived in clean()).
PLAIN_SETTINGS = (
    "total_cap",
    "max_requests_per_second",
    "batch_size",
    "requests_in_flight",
    "parallel_days",
)


class TargetChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Target) -> str:
        site = f"site {obj.site_id}" + (f" “{obj.site_name}”" if obj.site_name else "")
        zone = f", {obj.site_timezone}" if obj.site_timezone else ""
        ready = "" if obj.has_token and obj.last_check_ok and obj.token_can_write else " (not ready: check its token)"
        return f"{obj.name} – {site}{zone}{ready}"


class BackfillPlanForm(forms.ModelForm):
    """A draft's settings. Validation is the plan's guardrails (``planning.check_plan``),
    shown next to the fields; the window is dates or "the last N days"."""

    targets = TargetChoiceField(
        queryset=Target.objects.enabled().order_by("name"),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one target."},
    )
    preset = forms.ModelChoiceField(queryset=Preset.objects.all(), empty_label=None)
    last_days = forms.IntegerField(
        label="Or: the last N days",
        required=False,
        min_value=1,
        max_value=MAX_WINDOW_DAYS,
        help_text="Instead of dates: the N fully past days ending yesterday, in the site's time zone.",
    )
    start_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    visits_per_day = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_VISITS_PER_DAY,
        help_text="Blank: the preset's. Shaped by its weekly curve.",
    )
    seed = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_SEED, help_text="Blank: a random seed. Same seed, same visits."
    )

    class Meta:
        model = BackfillPlan
        fields = [
            "targets",
            "preset",
            "start_date",
            "end_date",
            "last_days",
            "visits_per_day",
            "daily_cap",
            "total_cap",
            "seed",
            "max_requests_per_second",
            "batch_size",
            "requests_in_flight",
            "parallel_days",
        ]
        help_texts = {
            "daily_cap": "At most this many visits on any day. Blank: the preset's daily visit cap, if it has one.",
        }

    def __init__(self, *args, today=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.today = today
        if self.instance.pk:
            self.initial.setdefault("targets", list(self.instance.targets.all()))
        elif not self.is_bound:
            self.initial.setdefault("targets", Target.objects.enabled().only_choice())
        # Left empty (or missing from a scripted POST), it keeps the measured default.
        if "requests_in_flight" in self.fields:  # the admin shows it read-only once confirmed
            self.fields["requests_in_flight"].required = False

    def clean_requests_in_flight(self) -> int:
        value = self.cleaned_data.get("requests_in_flight")
        return DEFAULT_REQUESTS_IN_FLIGHT if value is None else value

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        preset: Preset | None = data.get("preset")
        targets = list(data.get("targets") or [])
        if preset is None or self.errors:
            return data
        plan = self.instance
        # The caps and the pacing as submitted (ModelForm copies them onto the plan only
        # after clean()): the total-visits guardrail counts the capped days.
        for name in PLAIN_SETTINGS:
            if name in data:
                setattr(plan, name, data[name])
        try:
            plan.prepare_draft(
                preset=preset,
                targets=targets,
                start_date=data.get("start_date"),
                end_date=data.get("end_date"),
                last_days=data.get("last_days"),
                visits_per_day=data.get("visits_per_day"),
                daily_cap=data.get("daily_cap"),
                seed=data.get("seed"),
                today=self.today,
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, messages)
        else:
            # ModelForm copies the cleaned data onto the plan after clean(): the window,
            # rate, daily cap and seed the plan chose, not the blanks that asked for them.
            data.update(
                start_date=plan.start_date,
                end_date=plan.end_date,
                visits_per_day=plan.visits_per_day,
                daily_cap=plan.daily_cap,
                seed=plan.seed,
            )
        return data

    def save_draft(self, user=None) -> BackfillPlan:
        """Save the draft and its targets, logged with who did it (``BackfillPlan.save_draft``)."""
        self.instance.save_draft(list(self.cleaned_data["targets"]), by=user)
        return self.instance


class ConfirmForm(forms.Form):
    """The explicit act: type the target's name (names) to confirm."""

    typed_name = forms.CharField(label="Type the target's name to confirm", max_length=1000)
    # The draft revision whose estimate the page showed: confirm() refuses another one.
    revision = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    def __init__(self, *args, plan: BackfillPlan, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.fields["revision"].initial = plan.draft_revision
        self.phrase = plan.confirmation_phrase()
        if "," in self.phrase:
            self.fields["typed_name"].label = "Type the targets' names, comma-separated, to confirm"

    def clean_typed_name(self) -> str:
        typed = " ".join(self.cleaned_data["typed_name"].split())
        if typed != self.phrase:
            raise ValidationError(f"That is not “{self.phrase}”. Nothing was confirmed.")
        return typed
