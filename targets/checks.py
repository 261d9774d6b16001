"""Connection check: is this really a Matomo, does the site exist, may our token write to it?

Nothing here records a visit: the tracker is probed with a request that has no tracking
parameters (Matomo answers it with its "This resource is part of Matomo" text), and
everything else goes through the Reporting API with the token in the POST body.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3

from targets.models import Target
from trafficinator.strictjson import MAX_ANSWER_BYTES, StrictJSONError, count_or_none, loads_strict
from trafficinator.validation import timezone_is_known

# Column sizes of what the check stores on a Target.
SITE_NAME_MAX: int = Target._meta.get_field("site_name").max_length or 255
VERSION_MAX: int = Target._meta.get_field("matomo_version").max_length or 32
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# "5.0.2", "4.16.1-b2", "5.1.0-rc1": digits and dots, then an optional pre-release tag.
_VERSION = re.compile(r"^\d{1,4}(\.\d{1,6}){0,3}([-+.~][0-9A-Za-z.-]{1,20})?$")
# Matomo's manual offsets ("UTC+5.5", "UTC-3"), which are not IANA names.
_UTC_OFFSET = re.compile(r"^UTC([+-])(\d{1,2}(?:\.\d+)?)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

CHECK_TIMEOUT_SECONDS = 10.0
# The visitor IP of the token probes (rec=0: recorded nowhere). TEST-NET-3, no bot range.
PROBE_IP = "203.0.113.7"
USER_AGENT = "Trafficinator connection check"
# Matomo's goal names are VARCHAR(50); a longer or stranger one is cut, never stored whole.
GOAL_NAME_MAX = 100
# Far more goals than any site has (the target stores them all, and runs map each one).
MAX_GOALS = 1000


class CheckFailed(Exception):
    """One step failed; the message is meant for the user as it is."""


@dataclass
class CheckResult:
    ok: bool
    message: str
    steps: list[str] = field(default_factory=list)
    site_name: str = ""
    site_timezone: str = ""
    site_currency: str = ""
    site_created: date | None = None
    matomo_version: str = ""
    token_can_write: bool | None = None
    token_secure_only: bool | None = None
    site_goals: dict[int, str] | None = None
    site_ecommerce: bool | None = None
    site_search: bool | None = None
    # Things that work but will not look as the preset says (goals missing, ...), and
    # what Matomo answered that we could not use as it was (an unknown time zone, ...).
    warnings: list[str] = field(default_factory=list)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything behind it: requests wraps urllib3 errors in ``args``,
    urllib3 keeps the socket error in ``.reason``, and Python chains the rest."""
    found: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        found.append(item)
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        stack.extend(link for link in linked if isinstance(link, BaseException))
    return found


def describe_network_error(exc: requests.RequestException, url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> str:
    """A specific, human sentence for a failed request (DNS, refused, timeout, TLS, ...)."""
    host = urlparse(url).hostname or url
    causes = _causes(exc)
    if isinstance(exc, requests.exceptions.SSLError) or any(isinstance(c, ssl.SSLError) for c in causes):
        detail = next((str(c) for c in causes if isinstance(c, ssl.SSLError)), str(exc))
        if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail:
            return (
                f"TLS error: the certificate of {host} could not be verified ({_short(detail)}). "
                "Use a certificate from a trusted authority, or http:// for a local test instance."
            )
        return f"TLS error talking to {host}: {_short(detail)}."
    if isinstance(exc, requests.exceptions.Timeout):
        return f"Timeout: {host} did not answer within {timeout:g} s."
    if any(isinstance(c, socket.gaierror) for c in causes) or "NameResolutionError" in repr(causes):
        return f"DNS error: the host name {host} could not be resolved. Check the spelling of the Matomo URL."
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "Connection refused" in str(exc):
        return f"Connection refused by {host}: nothing listens on that port. Is the URL (and port) right?"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return f"Connection reset by {host} before it answered."
    return f"Could not connect to {host}: {_short(str(exc))}."


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MatomoClient:
    """The few Matomo HTTP calls the check needs. The token only ever goes in POST bodies."""

    def __init__(self, target: Target, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self.target = target
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise CheckFailed(describe_network_error(exc, url, self.timeout)) from None

    def probe_tracker(self) -> None:
        """GET matomo.php with no parameters: Matomo answers with a short text naming itself
        and records nothing."""
        url = self.target.tracking_url
        response = self._request("GET", url)
        if response.is_redirect:
            location = response.headers.get("Location", "")
            raise CheckFailed(
                f"{url} redirects to {location}. Enter the final Matomo URL "
                "(tracking requests are POSTs, and redirects would drop their bodies)."
            )
        body = response.text[:5000]
        looks_like_matomo = "matomo" in body.lower() or "piwik" in body.lower()
        if response.status_code in (200, 400) and looks_like_matomo:
            return
        if response.status_code == 503 and looks_like_matomo:
            raise CheckFailed(f"Matomo at {url} answered 503: tracking is disabled (record_statistics=0).")
        raise CheckFailed(
            f"Not a Matomo: {url} answered HTTP {response.status_code} {response.reason or ''}".rstrip()
            + " without Matomo's tracker text. Check the Matomo URL (it is the folder that holds matomo.php)."
        )

    def probe_site(self) -> None:
        """``idsite=N&rec=0``: Matomo answers 400 for an unknown site and 204 for a known one,
        and records nothing (rec=0 excludes the request) -- a site check without a token."""
        data = {"idsite": self.target.site_id, "rec": 0, "send_image": 0}
        response = self._request("POST", self.target.tracking_url, data=data)
        if response.status_code == 400:
            raise CheckFailed(
                f"Unknown site id {self.target.site_id}: the tracker answered 400 to a request that records "
                "nothing. Check the site id in Matomo under Administration → Websites."
            )
        if response.status_code not in (200, 204):
            raise CheckFailed(
                f"The tracker answered HTTP {response.status_code} to a site probe for site id {self.target.site_id}."
            )

    def probe_token_modes(self) -> tuple[bool, bool]:
        """Whether the tracker accepts the token (form POST, single hit) and in a JSON bulk body.

        Both probes carry ``cip`` (which needs the token) and ``rec=0``: Matomo reads the IP,
        and so checks the token, before it looks at ``rec``, so an accepted probe is
        excluded (recorded nowhere) and a refused one is a 400, or ``invalid`` in bulk.
        Matomo 5's "secure only" tokens pass the first and fail the second."""
        site_id = self.target.site_id
        token = self.target.token_auth
        single = self._request(
            "POST",
            self.target.tracking_url,
            data={"idsite": site_id, "rec": 0, "send_image": 0, "cip": PROBE_IP, "token_auth": token},
        )
        form_ok = single.status_code in (200, 204)
        body = {"requests": [f"?idsite={site_id}&rec=0&send_image=0&cip={PROBE_IP}"], "token_auth": token}
        bulk = self._request("POST", self.target.tracking_url, json=body, stream=True)
        try:
            answer = loads_strict(self._read_limited(bulk, "tracker", self.target.tracking_url))
        # Not a bulk answer, a hostile one, one too large or cut off: whatever answered did
        # not take the token in bulk, and the check goes on (the README's promise).
        except (CheckFailed, StrictJSONError):
            answer = None
        if not isinstance(answer, dict):
            return form_ok, False
        bulk_ok = bulk.status_code == 200 and count_or_none(answer.get("invalid", 1) or 0) == 0
        return form_ok, bulk_ok and count_or_none(answer.get("tracked")) == 1

    def call_api(self, method: str, **params: Any) -> Any:
        """Call one Reporting API method and return the decoded JSON value.

        Matomo wraps scalars as {"value": x} and reports errors as
        {"result": "error", "message": "..."}; the latter raises ``ApiError``."""
        query = {"module": "API", "method": method, "format": "json", **params}
        response = self._request(
            "POST", self.target.api_url, params=query, data={"token_auth": self.target.token_auth}, stream=True
        )
        if response.status_code >= 400 and not response.headers.get("Content-Type", "").startswith("application/json"):
            response.close()
            raise CheckFailed(f"The Reporting API at {self.target.api_url} answered HTTP {response.status_code}.")
        body = self._read_limited(response, "Reporting API", self.target.api_url)
        try:
            # Strict: NaN, Infinity, huge numbers and deep nesting are no Matomo answer, and
            # would otherwise reach int() or a page as a value nobody can use.
            data = loads_strict(body)
        except StrictJSONError as exc:
            raise CheckFailed(
                f"The Reporting API at {self.target.api_url} did not answer usable JSON (HTTP {response.status_code}: "
                f"{_short(str(exc), 100)}). Is this a Matomo?"
            ) from None
        if isinstance(data, dict) and data.get("result") == "error":
            raise ApiError(_short(_text(data.get("message", "")), 500))
        if isinstance(data, dict) and set(data) == {"value"}:
            return data["value"]
        return data

    def _read_limited(self, response: requests.Response, what: str, url: str) -> bytes:
        """The body, refusing answers far bigger than any the check asks for (a hostile
        or misconfigured server must not fill our memory)."""
        try:
            body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
        # urllib3's own errors too: a connection reset, a read timeout or a bad gzip body
        # in the middle of the answer is a ProtocolError, ReadTimeoutError or DecodeError.
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise CheckFailed(f"Reading the answer of {url} failed: {_short(str(exc))}.") from None
        finally:
            response.close()
        if len(body) > MAX_ANSWER_BYTES:
            raise CheckFailed(
                f"The {what} at {url} answered more than {MAX_ANSWER_BYTES // 1_000_000} MB "
                "to a small request. Is this a Matomo?"
            )
        return body


class ApiError(CheckFailed):
    """Matomo's API answered with {"result": "error"}; the message is Matomo's own."""


def _token_problem(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("token", "authenticate", "credentials", "not logged in", "anonymous"))


def _site_ids(value: Any) -> set[int]:
    if not isinstance(value, list):
        return set()
    return {number for item in value if (number := count_or_none(item)) is not None}


def check_target(target: Target, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> CheckResult:
    """Run every step we can with what the target has; stop at the first failure."""
    client = MatomoClient(target, timeout=timeout)
    result = CheckResult(ok=False, message="")
    try:
        client.probe_tracker()
        result.steps.append(f"Tracker answers at {target.tracking_url}.")
        client.probe_site()
        result.steps.append(f"Site id {target.site_id} exists (a request that records nothing).")
        if not target.has_token:
            result.ok = True
            result.message = (
                f"Tracker reachable at {target.tracking_url}, site id {target.site_id} exists. No token: visitor "
                "countries and backfill (which need a token) are unavailable, and goal conversions are left out "
                "(the site's goals cannot be read)."
            )
            return result
        _check_with_token(client, target, result)
    except ApiError as exc:
        if _token_problem(str(exc)):
            result.message = f"Token rejected by Matomo: {exc}"
        else:
            result.message = f"Matomo's API answered with an error: {exc}"
    except CheckFailed as exc:
        result.message = str(exc)
    finally:
        client.session.close()
    result.message = _scrub(result.message, target.token_auth)
    return result


# --- Matomo's answers, validated before anything is stored -----------------------------


def _text(value: Any) -> str:
    """A scalar answer as one line of text (lists, dicts and None count as nothing)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return _CONTROL.sub(" ", str(value)).strip()


def parse_version(value: Any, warnings: list[str]) -> str:
    text = _text(value)
    if _VERSION.match(text) and len(text) <= VERSION_MAX:
        return text
    warnings.append(f"Matomo's version answer “{_short(text or repr(value), 60)}” is not a version number; ignored.")
    return ""


def parse_timezone(value: Any, warnings: list[str]) -> str:
    """An IANA zone name this machine knows, or "" with a warning (days then follow the
    preset's time zone). Matomo's manual whole-hour offsets ("UTC+3") map to Etc/GMT-3."""
    text = _text(value)
    offset = _UTC_OFFSET.match(text)
    if offset:
        sign, hours = offset.groups()
        if float(hours) == 0:
            return "UTC"
        if float(hours).is_integer() and int(float(hours)) <= 14:
            # POSIX-style Etc zones have the sign inverted: UTC+3 is Etc/GMT-3.
            return f"Etc/GMT{'-' if sign == '+' else '+'}{int(float(hours))}"
    if timezone_is_known(text):
        return text
    warnings.append(
        f"Matomo's time zone “{_short(text or repr(value), 70)}” is unknown on this machine (install a newer "
        "tzdata package, or set an IANA zone on the site in Matomo); days follow the preset's time zone "
        "instead, so backfilled days may be shifted against the site's days."
    )
    return ""


def parse_currency(value: Any, warnings: list[str]) -> str:
    text = _text(value)
    if _CURRENCY.match(text):
        return text
    warnings.append(f"Matomo's currency “{_short(text or repr(value), 20)}” is not a 3-letter code; ignored.")
    return ""


def parse_site_name(value: Any) -> str:
    return _short(_text(value), SITE_NAME_MAX)


def parse_created(value: Any, warnings: list[str]) -> date | None:
    """``ts_created`` ("YYYY-MM-DD HH:MM:SS", UTC) as the day the site was created."""
    text = _text(value)
    try:
        created = datetime.fromisoformat(text).date() if text else None
    except ValueError:
        created = None
    if created is None or created.year < 2000:
        warnings.append(f"Matomo's site creation date “{_short(text or repr(value), 40)}” is not a date; ignored.")
        return None
    return created


def parse_site(site: Any, result: CheckResult) -> None:
    """Fill ``result`` from a ``SitesManager.getSiteFromId`` answer, every value checked:
    a hostile or unexpected answer becomes a warning, never a value we cannot use."""
    result.site_name = parse_site_name(site.get("name"))
    result.site_timezone = parse_timezone(site.get("timezone"), result.warnings)
    result.site_currency = parse_currency(site.get("currency"), result.warnings)
    result.site_created = parse_created(site.get("ts_created"), result.warnings)


def _check_with_token(client: MatomoClient, target: Target, result: CheckResult) -> None:
    result.matomo_version = parse_version(client.call_api("API.getMatomoVersion"), result.warnings)
    result.steps.append(f"Token accepted by Matomo {result.matomo_version or '(unknown version)'}.")
    try:
        site = client.call_api("SitesManager.getSiteFromId", idSite=target.site_id)
    except ApiError as exc:
        text = str(exc)
        lowered = text.lower()
        # Matomo 5 says "An unexpected website was found in the request: website id was set
        # to '9' ." for a super user; older versions and plugins say "doesn't exist".
        if any(phrase in lowered for phrase in ("unexpected website", "exist", "not found")):
            raise CheckFailed(f"Unknown site id {target.site_id}: Matomo says “{text}”") from None
        if "access" in lowered:
            raise CheckFailed(
                f"The token has no access to site id {target.site_id} (or the site does not exist): "
                f"Matomo says “{text}”"
            ) from None
        raise
    if not isinstance(site, dict) or "idsite" not in site:
        raise CheckFailed(f"Unknown site id {target.site_id}: Matomo returned no site.")
    parse_site(site, result)
    result.steps.append(
        f"Site {target.site_id} is “{result.site_name}” ({result.site_timezone or 'unknown time zone'}, "
        f"{result.site_currency or 'unknown currency'})"
        + (f", created {result.site_created}." if result.site_created else ".")
    )

    result.token_can_write = _token_can_write(client, target.site_id)
    if not result.token_can_write:
        raise CheckFailed(
            f"The token can only view site {target.site_id}. Tracking with visitor countries (cip) or dates "
            "older than 24 h (backfill) needs a token of a user with write or admin access, or a super user."
        )
    # What the token makes possible is said once the bulk probe has run: a secure-only
    # token allows countries in single hits but neither bulk with countries nor backfill.
    result.steps.append("Token has write access.")

    form_ok, bulk_ok = client.probe_token_modes()
    if not form_ok:
        raise CheckFailed(
            "The tracker refused the token in a POST form (a probe that records nothing), although the "
            "Reporting API accepted it. Is a proxy rewriting requests to matomo.php?"
        )
    result.token_secure_only = not bulk_ok
    if bulk_ok:
        result.steps.append(
            "The tracker accepts the token in single hits and in bulk requests: countries and backfill are possible."
        )
    else:
        result.steps.append(
            "The token is “secure only”: it works in single hits (POST form) but Matomo ignores it in bulk "
            "(JSON) requests. Live runs with countries send single hits instead of bulk; backfill needs a "
            "token created with “Only allow secure requests” unticked."
        )
        result.warnings.append("secure-only token: no bulk with countries, no backfill")

    result.site_ecommerce = _flag(site.get("ecommerce"))
    result.site_search = _flag(site.get("sitesearch"))
    result.site_goals = _goals(client.call_api("Goals.getGoals", idSite=target.site_id), result.warnings)
    result.steps.append(_goals_step(result))
    if not result.site_goals:
        result.warnings.append("no goals: conversions are left out")
    if result.site_ecommerce is False:
        result.steps.append("Ecommerce is off for this site: orders are recorded but not shown in reports.")
        result.warnings.append("ecommerce off")
    result.ok = True
    result.message = (
        f"OK: Matomo {result.matomo_version or '(unknown version)'}, site {target.site_id} “{result.site_name}” "
        f"({result.site_timezone or 'unknown time zone'}, {result.site_currency or 'unknown currency'}); "
        "token has write access."
    )
    if result.warnings:
        result.message += f" Note: {'; '.join(result.warnings)}."


def _flag(value: Any) -> bool | None:
    if value in (None, ""):
        return None
    return str(value) not in ("0", "false", "False")


def _goals(value: Any, warnings: list[str] | None = None) -> dict[int, str]:
    """``Goals.getGoals``: an object keyed by goal id in Matomo 5, a list in older ones
    (and ``[]`` for no goals). Ids must be counts and names become one line of at most
    GOAL_NAME_MAX characters without control characters (PostgreSQL refuses NUL in
    JSON); anything else is skipped with a warning, never stored."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    goals: dict[int, str] = {}
    skipped = 0
    for item in items:
        idgoal = count_or_none(item.get("idgoal")) if isinstance(item, dict) else None
        if idgoal is None or idgoal == 0 or len(goals) >= MAX_GOALS:
            skipped += 1
            continue
        goals[idgoal] = _short(_text(item.get("name", "")), GOAL_NAME_MAX)
    if skipped and warnings is not None:
        warnings.append(
            f"Matomo's goal list had {skipped} entr{'y' if skipped == 1 else 'ies'} without a usable goal id "
            f"(or more than {MAX_GOALS} goals); ignored"
        )
    return goals


def _goals_step(result: CheckResult) -> str:
    goals = result.site_goals or {}
    if not goals:
        return (
            "The site has no goals: goal conversions are left out of runs (Matomo rejects them). "
            "`manage.py target prepare NAME` creates the catalog's goals."
        )
    listed = ", ".join(f"{idgoal} “{name}”" for idgoal, name in sorted(goals.items()))
    return f"The site has {len(goals)} goal(s): {listed}."


def _token_can_write(client: MatomoClient, site_id: int) -> bool:
    if client.call_api("UsersManager.hasSuperUserAccess") is True:
        return True
    writable = _site_ids(client.call_api("SitesManager.getSitesIdWithAdminAccess"))
    writable |= _site_ids(client.call_api("SitesManager.getSitesIdWithWriteAccess"))
    return site_id in writable


def _scrub(text: str, secret: str) -> str:
    """Defence in depth: never let a token reach a message, even if Matomo echoed it."""
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


def run_check(target: Target) -> CheckResult:
    """Check and remember the outcome on the target."""
    result = check_target(target)
    target.record_check(result)
    return result


def token_works_in_bulk(target: Target) -> bool:
    """Whether Matomo accepts the target's token in bulk requests: what the last check
    learned, else a probe now (rec=0, records nothing), remembered on the target. A bulk
    run must know before its first batch: a secure-only token there tracks nothing that
    needs it. A probe that cannot reach Matomo answers True and leaves the sender's own
    detection to act."""
    if target.token_secure_only is not None:
        return not target.token_secure_only
    client = MatomoClient(target)
    try:
        form_ok, bulk_ok = client.probe_token_modes()
    except CheckFailed:
        return True
    finally:
        client.session.close()
    if form_ok:
        target.token_secure_only = not bulk_ok
        target.save(update_fields=["token_secure_only", "updated_at"])
    return bulk_ok or not form_ok
