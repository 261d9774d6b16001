"""Connection check: is this really a Matomo, does the site exist, may our token write to it?

Nothing here records a visit: the tracker is probed with a request that has no tracking
parameters (Matomo answers it with its "This resource is part of Matomo" text), and
everything else goes through the Reporting API with the token in the POST body.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import requests

from targets.models import Target

CHECK_TIMEOUT_SECONDS = 10.0
USER_AGENT = "Trafficinator connection check"


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
    matomo_version: str = ""
    token_can_write: bool | None = None


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


def describe_network_error(exc: requests.RequestException, url: str) -> str:
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
        return f"Timeout: {host} did not answer within {CHECK_TIMEOUT_SECONDS:g} s."
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
            raise CheckFailed(describe_network_error(exc, url)) from None

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

    def call_api(self, method: str, **params: Any) -> Any:
        """Call one Reporting API method and return the decoded JSON value.

        Matomo wraps scalars as {"value": x} and reports errors as
        {"result": "error", "message": "..."}; the latter raises ``ApiError``."""
        query = {"module": "API", "method": method, "format": "json", **params}
        response = self._request("POST", self.target.api_url, params=query, data={"token_auth": self.target.token_auth})
        if response.status_code >= 400 and not response.headers.get("Content-Type", "").startswith("application/json"):
            raise CheckFailed(f"The Reporting API at {self.target.api_url} answered HTTP {response.status_code}.")
        try:
            data = response.json()
        except ValueError:
            raise CheckFailed(
                f"The Reporting API at {self.target.api_url} did not answer JSON (HTTP {response.status_code}). "
                "Is this a Matomo?"
            ) from None
        if isinstance(data, dict) and data.get("result") == "error":
            raise ApiError(str(data.get("message", "")))
        if isinstance(data, dict) and set(data) == {"value"}:
            return data["value"]
        return data


class ApiError(CheckFailed):
    """Matomo's API answered with {"result": "error"}; the message is Matomo's own."""


def _token_problem(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("token", "authenticate", "credentials", "not logged in", "anonymous"))


def _site_ids(value: Any) -> set[int]:
    if not isinstance(value, list):
        return set()
    ids = set()
    for item in value:
        try:
            ids.add(int(item))
        except (TypeError, ValueError):
            continue
    return ids


def check_target(target: Target, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> CheckResult:
    """Run every step we can with what the target has; stop at the first failure."""
    client = MatomoClient(target, timeout=timeout)
    result = CheckResult(ok=False, message="")
    try:
        client.probe_tracker()
        result.steps.append(f"Tracker answers at {target.tracking_url}.")
        if not target.has_token:
            result.ok = True
            result.message = (
                f"Tracker reachable at {target.tracking_url}. No token: site id {target.site_id} is not verified, "
                "and visitor countries and backfill (which need a token) are unavailable."
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


def _check_with_token(client: MatomoClient, target: Target, result: CheckResult) -> None:
    result.matomo_version = str(client.call_api("API.getMatomoVersion"))
    result.steps.append(f"Token accepted by Matomo {result.matomo_version}.")
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
    result.site_name = str(site.get("name", ""))
    result.site_timezone = str(site.get("timezone", ""))
    result.site_currency = str(site.get("currency", ""))
    result.steps.append(
        f"Site {target.site_id} is “{result.site_name}” ({result.site_timezone}, {result.site_currency})."
    )

    result.token_can_write = _token_can_write(client, target.site_id)
    if not result.token_can_write:
        raise CheckFailed(
            f"The token can only view site {target.site_id}. Tracking with visitor countries (cip) or dates "
            "older than 24 h (backfill) needs a token of a user with write or admin access, or a super user."
        )
    result.steps.append("Token has write access: countries and backfill are possible.")
    result.ok = True
    result.message = (
        f"OK: Matomo {result.matomo_version}, site {target.site_id} “{result.site_name}” "
        f"({result.site_timezone}, {result.site_currency}); token has write access."
    )


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
