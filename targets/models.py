"""A target is one Matomo site we send traffic to."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from trafficinator.traffic import Catalog, SiteGoals
from trafficinator.validation import check_model_values, no_control_characters, timezone_is_known

if TYPE_CHECKING:
    from targets.checks import CheckResult

MAX_SITE_ID = 2**31 - 1
# A check's message is a sentence or two; Matomo's error text in it is bounded too.
CHECK_MESSAGE_MAX = 2000

# Paths a user may paste that point at a file inside the Matomo folder rather than at it.
_MATOMO_ENTRY_POINTS = ("matomo.php", "piwik.php", "index.php", "matomo.js", "piwik.js")
MATOMO_URL_MAX_LENGTH = 500
_FORBIDDEN_IN_URL = frozenset(chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)]) | {"\\", "<", ">", '"'}
# Letters, digits, hyphens and dots (internationalised names in their xn-- form, as
# requests sends them); an IP address literal is checked separately.
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$", re.IGNORECASE)


def normalize_matomo_url(raw: str) -> str:
    """The Matomo base URL, always ending in "/", from whatever a user pasted.

    Accepts ``https://host``, ``https://host/path``, ``.../matomo.php``, ``.../piwik.php``
    and ``.../index.php`` (with query strings or fragments, which are dropped), so that
    ``tracking_url`` and ``api_url`` can simply append the file name.
    """
    value = (raw or "").strip()
    if not value:
        raise ValidationError("Enter the Matomo URL, e.g. https://matomo.example.com/.")
    # urlsplit() silently drops tabs and line breaks and keeps spaces: refuse them, so
    # the URL we store is the URL the user typed.
    if any(ch.isspace() or ch in _FORBIDDEN_IN_URL for ch in value):
        raise ValidationError("A URL has no spaces, line breaks or control characters; paste it again.")
    if "://" not in value:
        raise ValidationError(f"“{value}” has no scheme; start it with https:// (or http://).")
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for http://[::1
        raise ValidationError(f"“{value}” is not a valid URL ({exc}).") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(f"“{parts.scheme}” URLs are not supported; use https:// or http://.")
    if not parts.hostname:
        raise ValidationError(f"“{value}” has no host name.")
    if parts.username or parts.password:
        raise ValidationError("Do not put a user name or password in the URL; use the token field.")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValidationError(f"“{value}” has an invalid port.") from None
    if not _is_ip_literal(parts.hostname) and not _HOST.match(_ascii_host(parts.hostname)):
        raise ValidationError(f"“{parts.hostname}” is not a valid host name.")
    path = parts.path or "/"
    last = path.rsplit("/", 1)[-1]
    if last.lower() in _MATOMO_ENTRY_POINTS:
        path = path[: -len(last)]
    if not path.endswith("/"):
        path += "/"
    normalized = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))
    if len(normalized) > MATOMO_URL_MAX_LENGTH:
        raise ValidationError(f"The URL is too long: at most {MATOMO_URL_MAX_LENGTH} characters.")
    return normalized


def _ascii_host(host: str) -> str:
    """An internationalised host name in the xn-- form requests sends ("" if impossible)."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def no_whitespace_or_control(value: str) -> None:
    if any(ch.isspace() or ch in _FORBIDDEN_IN_URL for ch in value):
        raise ValidationError("A token has no spaces, line breaks or control characters; paste it again.")


class TargetQuerySet(models.QuerySet["Target"]):
    def enabled(self) -> TargetQuerySet:
        return self.filter(enabled=True)

    def only_choice(self) -> list[int]:
        """[pk] when exactly one target is here, else []. The run and backfill forms tick
        the only enabled target: with nothing to choose, the first Start or Save must
        not fail with "Choose at least one target"."""
        pks = list(self.values_list("pk", flat=True)[:2])
        return pks if len(pks) == 1 else []


class Target(models.Model):
    """A Matomo site, its secret token, and what the last connection check learned.

    The token is write-only: forms show whether one is set, never its value, and it is
    sent to Matomo only in POST bodies (see ``targets.checks`` and the loader)."""

    name = models.CharField(
        max_length=100,
        validators=[no_control_characters],
        help_text="A unique name, used on the command line too.",
    )
    # A CharField: normalize_matomo_url() validates and normalises (see clean()).
    matomo_url = models.CharField(
        "Matomo URL",
        max_length=500,
        help_text="Where Matomo is installed, e.g. https://matomo.example.com/ (…/matomo.php works too).",
    )
    site_id = models.PositiveIntegerField(
        "site id", validators=[MinValueValidator(1), MaxValueValidator(MAX_SITE_ID)], help_text="Matomo's idsite."
    )
    token_auth = models.CharField(
        max_length=255,
        blank=True,
        validators=[no_whitespace_or_control],
        help_text="Needed for visitor countries (cip), backfill (cdt older than 24 h) and the Reporting API.",
    )
    enabled = models.BooleanField(default=True)

    # What the last connection check learned from Matomo.
    site_name = models.CharField(max_length=255, blank=True)
    site_timezone = models.CharField(max_length=64, blank=True)
    site_currency = models.CharField(max_length=3, blank=True)
    site_created = models.DateField(
        null=True, blank=True, help_text="The site's creation day in Matomo (ts_created): no backfill before it."
    )
    matomo_version = models.CharField(max_length=32, blank=True)
    token_can_write = models.BooleanField(
        null=True, blank=True, help_text="Whether the token may send token-only parameters (cip, old cdt) to this site."
    )
    token_secure_only = models.BooleanField(
        null=True,
        blank=True,
        help_text="Matomo ignores a 'secure only' token in bulk (JSON) requests: bulk runs then send single hits.",
    )
    # Goal id (as a JSON string key) -> name; None when unknown (no token, or not checked).
    site_goals = models.JSONField(null=True, blank=True, help_text="The site's goals (id: name), read with the token.")
    site_ecommerce = models.BooleanField(null=True, blank=True, help_text="Whether the site has ecommerce on.")
    site_search = models.BooleanField(null=True, blank=True, help_text="Whether the site has site search on.")
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(null=True, blank=True)
    last_check_message = models.TextField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TargetQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            # `target check NAME` and `run_traffic --target NAME` look targets up by name.
            models.UniqueConstraint(fields=["name"], name="target_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        # NaN, infinity, NUL and control characters that field validators let through.
        plain = check_model_values(self)
        if plain:
            raise ValidationError(plain)
        if self.matomo_url:
            try:
                self.matomo_url = normalize_matomo_url(self.matomo_url)
            except ValidationError as exc:
                raise ValidationError({"matomo_url": exc.messages}) from None

    @property
    def tracking_url(self) -> str:
        return self.matomo_url + "matomo.php"

    @property
    def api_url(self) -> str:
        return self.matomo_url + "index.php"

    @property
    def has_token(self) -> bool:
        return bool(self.token_auth)

    def effective_timezone(self, preset_timezone: str) -> str:
        """The site's own time zone wins once a check has learned it (Matomo splits visits
        and reports days in the site's time zone, not ours). A stored zone this machine
        cannot resolve (stored before checks validated it, or tz data older than
        Matomo's) falls back to the preset's, then to UTC: see ``timezone_warning``."""
        for name in (self.site_timezone, preset_timezone):
            if name and timezone_is_known(name):
                return name
        return "UTC"

    def timezone_warning(self, preset_timezone: str) -> str:
        """Why the days do not follow the site's own time zone, or ""."""
        if not self.site_timezone or timezone_is_known(self.site_timezone):
            return ""
        return (
            f"The site's time zone “{self.site_timezone[:70]}” is unknown on this machine (install a newer tzdata "
            f"package); days follow {self.effective_timezone(preset_timezone)} instead."
        )

    def record_check(self, result: CheckResult) -> None:
        """Store what a connection check learned; a failed check keeps earlier site facts."""
        self.last_checked_at = timezone.now()
        self.last_check_ok = result.ok
        self.last_check_message = result.message[:CHECK_MESSAGE_MAX]
        for field in ("site_name", "site_timezone", "site_currency", "site_created", "matomo_version"):
            value = getattr(result, field)
            if value:
                setattr(self, field, value)
        if result.token_can_write is not None:
            self.token_can_write = result.token_can_write
        for field in ("token_secure_only", "site_ecommerce", "site_search"):
            value = getattr(result, field)
            if value is not None:
                setattr(self, field, value)
        if result.site_goals is not None:
            self.site_goals = {str(idgoal): name for idgoal, name in sorted(result.site_goals.items())}
        self.save(
            update_fields=[
                "last_checked_at",
                "last_check_ok",
                "last_check_message",
                "site_name",
                "site_timezone",
                "site_currency",
                "site_created",
                "matomo_version",
                "token_can_write",
                "token_secure_only",
                "site_goals",
                "site_ecommerce",
                "site_search",
                "updated_at",
            ]
        )

    def goal_map(self) -> dict[int, str] | None:
        """The site's goals as last read from Matomo (id -> name), or None if unknown."""
        if self.site_goals is None:
            return None
        return {int(idgoal): str(name) for idgoal, name in self.site_goals.items()}

    def site_goals_for(self, catalog: Catalog) -> SiteGoals:
        """What a run may convert on this site. Unknown goals count as none: Matomo rejects
        a conversion for a goal the site lacks, so we send only those we know exist."""
        return SiteGoals(self.goal_map() or {}, catalog)

    def goals_notice(self, catalog: Catalog) -> str:
        """What a run leaves out of this site's traffic because of its goals (or "")."""
        if not catalog.goals:
            return ""
        if self.goal_map() is None:
            return (
                f"Target {self.name}: goal conversions are left out, because the site's goals are unknown "
                "(they are read by the connection check, which needs a token). Matomo rejects conversions for "
                f"goals a site does not have; `manage.py target prepare {self.name}` creates the catalog's goals."
            )
        missing = self.site_goals_for(catalog).missing(catalog)
        if not missing:
            return ""
        return (
            f"Target {self.name}: the site has no goal named {', '.join(missing)}; those conversions are left out "
            f"(Matomo would reject them). `manage.py target prepare {self.name}` creates them."
        )

    @property
    def check_status(self) -> str:
        if self.last_check_ok is None:
            return "never checked"
        return "ok" if self.last_check_ok else "failed"
