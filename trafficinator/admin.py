"""The admin of personal API tokens: created here, shown once, revocable."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils import timezone

from trafficinator.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    actions = ["revoke_tokens"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None):
        if obj is None:
            return ["user", "name"] if request.user.is_superuser else ["name"]
        return ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None):
        return [] if obj is None else ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_queryset(self, request: HttpRequest):
        """Superusers see every token; others only their own."""
        queryset = super().get_queryset(request).select_related("user")
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        return {"user": request.user.pk}

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change:
            return  # a token never changes; revoke it and create a new one
        if not request.user.is_superuser:
            obj.user = request.user  # type: ignore[assignment]  # the admin requires a logged-in user
        secret = obj.set_secret()
        super().save_model(request, obj, form, change)
        messages.warning(
            request,
            f"API token “{obj.name}” for {obj.user}: {secret} — copy it now, it is not shown again "
            "(only its hash is stored).",
        )

    @admin.action(description="Revoke the selected tokens")
    def revoke_tokens(self, request: HttpRequest, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)
