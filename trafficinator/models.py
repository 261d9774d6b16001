"""Personal API tokens: what the JSON API and /metrics authenticate with.

A token is shown once, when it is created in the admin; only its SHA-256 is stored (a
random 256-bit secret needs no slow hash: nothing can be guessed from the digest), with
its first characters to tell tokens apart. Revoking sets ``revoked_at``; the token then
stops working at once. ``last_used_at`` is written at most once a minute per token."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "tfx_"  # noqa: S105 - a marker that a string is a token, not a secret
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True, user__is_active=True)

    def authenticate(self, token: str) -> ApiToken | None:
        """The live token for ``token`` (and its user), or None; records the use."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        found = self.active().select_related("user").filter(token_hash=hash_token(token)).first()
        if found is not None:
            found.record_use()
        return found


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. “CI on staging”.")
    prefix = models.CharField(max_length=12, editable=False, help_text="The token's first characters.")
    token_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]
        constraints = [
            # Every API request looks its token up by this digest.
            models.UniqueConstraint(fields=["token_hash"], name="api_token_hash_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str) -> tuple[ApiToken, str]:
        """A new token for ``user``: the saved row and the secret, which is never stored."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=secret[:12], token_hash=hash_token(secret))
        return token, secret

    def set_secret(self) -> str:
        """Give an unsaved token its secret (the admin's add form); returns the secret."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.prefix, self.token_hash = secret[:12], hash_token(secret)
        return secret

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> bool:
        return bool(ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()))

    def record_use(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now
