from __future__ import annotations

from typing import Any

from django import forms

from targets.models import Target


class TargetForm(forms.ModelForm):
    """The token is write-only: the field is always rendered empty, a blank submission keeps
    the stored token, and "clear token" removes it."""

    token_auth = forms.CharField(
        label="Token auth",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    clear_token = forms.BooleanField(label="Remove the stored token", required=False)
    check_after_saving = forms.BooleanField(
        label="Check the connection after saving",
        required=False,
        initial=True,
        help_text="Asks Matomo for the site's name, time zone, currency and the token's access, "
        "as “Check connection” does.",
    )

    class Meta:
        model = Target
        fields = ["name", "matomo_url", "site_id", "token_auth", "enabled"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The stored value must never reach the page, not even as the field's initial value.
        self.initial["token_auth"] = ""
        has_token = bool(self.instance and self.instance.pk and self.instance.token_auth)
        self.fields["token_auth"].help_text = (
            "A token is set. Leave blank to keep it, or type a new one to replace it."
            if has_token
            else "No token set. " + Target._meta.get_field("token_auth").help_text
        )
        if not has_token:
            del self.fields["clear_token"]

    def clean_token_auth(self) -> str:
        value = self.cleaned_data.get("token_auth", "")
        if any(ch.isspace() for ch in value):
            raise forms.ValidationError("A token has no spaces or line breaks; paste it again.")
        return value

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.instance.pk and not cleaned.get("token_auth") and not cleaned.get("clear_token"):
            # Blank on edit keeps the old token.
            cleaned["token_auth"] = (
                Target.objects.filter(pk=self.instance.pk).values_list("token_auth", flat=True).first() or ""
            )
            self.instance.token_auth = cleaned["token_auth"]
        return cleaned
