"""The preset admin form: the content catalog as a user thinks of it (a list of URLs, a
site address, events as JSON) on top of the raw ``catalog_overrides`` JSON."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from presets.models import Preset
from trafficinator.traffic import Catalog, CatalogError
from trafficinator.validation import StrictJSONError, StrictJSONFormField, loads_strict

MAX_UPLOAD_BYTES = 2_000_000


class PresetForm(forms.ModelForm):
    site_url = forms.URLField(
        label="Site address",
        required=False,
        assume_scheme="https",
        help_text="The tracked website's address used in generated page URLs (default https://shop.example.com).",
    )
    pages_text = forms.CharField(
        label="Pages",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "https://www.example.com/pricing | Pricing"}),
        help_text="One absolute URL per line, optionally followed by “ | title”. Lines starting with # are ignored.",
    )
    pages_file = forms.FileField(label="…or upload a URL list", required=False, help_text="A text file, as above.")
    pages_mode = forms.ChoiceField(
        label="Use these pages to",
        choices=[("replace", "replace the default pages"), ("extend", "add to the default pages")],
        initial="replace",
    )
    events_json = forms.CharField(
        label="Events (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text='Replaces the default “other events”: [{"category": "Video", "action": "Play", "name": "Intro", '
        '"value": 1}, ...]',
    )

    class Meta:
        model = Preset
        fields = "__all__"  # noqa: DJ007 - the admin's fieldsets choose what is shown
        # NaN, Infinity, deeply nested or broken JSON: a form error, never a 500.
        field_classes = dict.fromkeys(
            ["ecommerce_shipping_options", "device_mix", "persona_mix", "channel_mix", "catalog_overrides"],
            StrictJSONFormField,
        )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        overrides = self.instance.catalog_overrides or {}
        site = overrides.get("site")
        if isinstance(site, dict):
            self.initial.setdefault("site_url", site.get("url", ""))
        pages = overrides.get("pages")
        if isinstance(pages, dict) and isinstance(pages.get("items"), str):
            self.initial.setdefault("pages_text", pages["items"])
            self.initial.setdefault("pages_mode", pages.get("mode", "replace"))
        if "events" in overrides:
            self.initial.setdefault("events_json", json.dumps(overrides["events"], indent=2, ensure_ascii=False))

    def clean_pages_file(self) -> str:
        upload = self.cleaned_data.get("pages_file")
        if not upload:
            return ""
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError("The file is larger than 2 MB; split it or paste the most visited pages.")
        try:
            text = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            raise forms.ValidationError("The file is not UTF-8 text.") from None
        if "\x00" in text:
            raise forms.ValidationError("The file contains NUL bytes: it is not a text file of URLs.")
        return text

    def clean_events_json(self):
        text = self.cleaned_data.get("events_json", "").strip()
        if not text:
            return None
        try:
            return loads_strict(text)
        except StrictJSONError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}.") from None

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        raw = cleaned.get("catalog_overrides")
        if raw is not None and not isinstance(raw, dict):
            self.add_error("catalog_overrides", 'Catalog overrides are a JSON object, e.g. {"pages": ...}, or {}.')
            return cleaned
        overrides = dict(raw or {})
        sources = {"site": "site_url", "pages": "pages_text", "events": "events_json"}
        if cleaned.get("site_url"):
            overrides["site"] = {"url": cleaned["site_url"]}
        elif "site_url" in self.changed_data:
            overrides.pop("site", None)
        pages = "\n".join(text for text in (cleaned.get("pages_text"), cleaned.get("pages_file")) if text)
        if pages.strip():
            overrides["pages"] = {"mode": cleaned.get("pages_mode") or "replace", "items": pages}
        elif "pages_text" in self.changed_data:
            overrides.pop("pages", None)
        if cleaned.get("events_json") is not None:
            overrides["events"] = cleaned["events_json"]
        elif "events_json" in self.changed_data:
            overrides.pop("events", None)
        try:
            Catalog.load_default().with_overrides(overrides)
        except CatalogError as exc:
            for part, message in exc.problems:
                self.add_error(sources.get(part, "catalog_overrides"), f"{part} {message}")
            return cleaned
        cleaned["catalog_overrides"] = overrides
        self.instance.catalog_overrides = overrides
        return cleaned
