from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.formsets import DELETION_FIELD_NAME
from django.forms.models import BaseInlineFormSet

from funnels.kinds import DETAIL_COLUMNS
from funnels.models import Funnel, FunnelStep
from trafficinator.validation import StrictJSONFormField

MAX_PREVIEW_JOURNEYS = 100_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024


class FunnelForm(forms.ModelForm):
    class Meta:
        model = Funnel
        fields = ["name", "description", "enabled", "share", "priority", "all_presets", "presets"]
        widgets = {"presets": forms.CheckboxSelectMultiple, "description": forms.Textarea(attrs={"rows": 2})}

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        # The model judges share totals with the presets being saved, not the old ones.
        self.instance.set_pending_presets(cleaned.get("presets") or [])
        return cleaned


class FunnelStepForm(forms.ModelForm):
    class Meta:
        model = FunnelStep
        fields = ["position", "kind", "delay_min", "delay_max", "continue_probability", *DETAIL_COLUMNS]
        widgets = {"items": forms.Textarea(attrs={"rows": 3, "cols": 80})}
        field_classes = {"items": StrictJSONFormField}


class FunnelStepFormSet(BaseInlineFormSet):
    """New rows get the next free position; the funnel as a whole needs at least one step
    and distinct positions (``Funnel.validate_steps``)."""

    def get_form_kwargs(self, index):
        kwargs = super().get_form_kwargs(index)
        if index is not None and index >= self.initial_form_count():
            taken = [step.position for step in self.get_queryset()]
            kwargs["initial"] = {"position": max(taken, default=0) + 1 + index - self.initial_form_count()}
        return kwargs

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        steps = [
            form.instance
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get(DELETION_FIELD_NAME) and form.cleaned_data.get("kind")
        ]
        try:
            Funnel.validate_steps(steps)
        except ValidationError as exc:
            raise ValidationError(exc.messages) from None


class PreviewForm(forms.Form):
    DEFAULTS = {"journeys": 1000, "seed": 1}

    journeys = forms.IntegerField(
        min_value=1, max_value=MAX_PREVIEW_JOURNEYS, initial=1000, help_text=f"1 to {MAX_PREVIEW_JOURNEYS:,}"
    )
    seed = forms.IntegerField(min_value=0, max_value=2**63 - 1, initial=1, help_text="Same seed, same result.")

    def values(self) -> tuple[int, int] | None:
        """(journeys, seed) when valid."""
        if not self.is_valid():
            return None
        return self.cleaned_data["journeys"], self.cleaned_data["seed"]


class ImportForm(forms.Form):
    file = forms.FileField(required=False, help_text="A JSON file exported from Trafficinator.")
    text = forms.CharField(
        label="or paste JSON",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12, "cols": 100, "spellcheck": "false"}),
    )
    replace = forms.BooleanField(
        label="Replace funnels with the same name",
        required=False,
        help_text="Otherwise a name that exists already is an error.",
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        upload, text = cleaned.get("file"), cleaned.get("text", "")
        if upload and text.strip():
            raise ValidationError("Upload a file or paste JSON, not both.")
        if upload:
            if upload.size > MAX_IMPORT_BYTES:
                raise ValidationError(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB.")
            cleaned["source"] = upload.read()
        elif text.strip():
            cleaned["source"] = text
        else:
            raise ValidationError("Choose a JSON file or paste its text.")
        return cleaned
