"""``FakeMatomo``: a local Matomo look-alike for tests and benchmarks.

It answers the Tracking API (``matomo.php``/``piwik.php``, single and bulk) and a slice
of the Reporting API (``index.php``) the way Matomo 5 does, records what it accepts, and
fails on demand. See the package docstring for the rules and their sources.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .faults import Fault, FaultPlan
from .httpserver import RESET, HTTPServer, Request, Response
from .model import VISIT_INACTIVITY_SECONDS, Hit, Site, Token, Visit, group_visits, make_sites, make_tokens
from .reporting import MSG_AUTH_FAILED_INSECURE, MSG_AUTH_FAILED_SECURE, ApiError, Caller, ReportingApi
from .rules import CDT_WITHOUT_TOKEN_SECONDS, Outcome, RuleConfig, evaluate, parse_query
from .store import Recorder

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAAAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")  # 43 bytes

# Matomo's answer when nothing was tracked (core/Tracker/Response.php).
MATOMO_TRACKER_TEXT = (
    b"This resource is part of Matomo. Keep full control of your data with the leading free and open source "
    b"<a href='https://matomo.org' target='_blank' rel='noopener noreferrer nofollow'>web analytics & conversion "
    b"optimisation platform</a>.<br>\n"
    b"This file is the endpoint for the Matomo tracking API. If you want to access the Matomo UI or use the "
    b"Reporting API, please use <a href='index.php'>index.php</a> instead.\n"
)

_LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in - Matomo</title></head>"
    b"<body><p>Matomo (fake_matomo): sign in to see your analytics.</p></body></html>\n"
)
_JSON = "application/json; charset=utf-8"
_FORM = "application/x-www-form-urlencoded"


def _json_bytes(data: Any) -> bytes:
    # Compact like PHP's json_encode; slashes unescaped is fine for clients.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _scalar(value: Any) -> str:
    """A JSON value of a dict-form bulk entry as the string PHP would see."""
    if isinstance(value, str):
        return value
    if value is True:
        return "1"
    if value is False or value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


class FakeMatomo:
    """A local Matomo 5 for tests and benchmarks; serves on 127.0.0.1.

    Arguments (all keyword except ``sites``/``tokens``/``version``):

    * ``sites``: ``None`` (site 1, UTC), ints, ``Site`` objects, dicts, or ``{id: Site|dict}``.
    * ``tokens``: ``{value: Token|dict}`` or ``[Token, ...]`` (dict keys: superuser, write,
      admin, view, secure_only, login).
    * ``version``: what ``API.getMatomoVersion`` answers.
    * ``host``/``port``: where to listen (port 0 = a free port, the default).
    * ``keep_hits``: keep every accepted hit (default). False = count-only mode for
      benchmarks (``visits()``/``hits_for()`` are then unavailable).
    * ``record_statistics``: False = Matomo's global ``record_statistics = 0``: single hits
      get 503, bulk requests 200 with ``tracked: 0`` (both as in Matomo).
    * ``raw_data_retention_days``: reject ``cdt`` older than this (Matomo's "delete old raw
      data"); None = keep forever.
    * ``cdt_without_token_seconds``: how old a ``cdt`` may be without a token (86400).
    * ``strict_cid_hex``: a ``cid`` must be 16 hex characters (default). Matomo itself only
      checks the length; non-hex ids are accepted and mangled.
    * ``modern_auth``: behave like Matomo releases with PR #23335 (mid-2025): a token in
      the JSON bulk body counts as sent securely, and ``Authorization: Bearer`` works.
      Default False, Matomo 5.3 behaviour: a secure-only token in a JSON body is ignored.
    * ``visit_inactivity``: seconds that end a visit in ``visits()`` (1800).
    * ``clock``: ``() -> epoch seconds``, for tests that need a fixed "now".
    * ``latency``: seconds added to every tracking and API request.
    * ``key_limit``: how many visitors, order ids and duplicate signatures the rules
      remember (a full map forgets its oldest entries down to 3/4 of the limit). Default:
      unlimited when hits are kept, 1,000,000 in count-only mode (about 300 MB at most).
    * ``capacity``: capacity mode, like a real Matomo's fixed pool of PHP workers: at most
      this many tracking requests are served at once (the others queue), and each holds
      its worker for ``service_time_per_request`` + ``service_time_per_hit`` x its hits
      (seconds). A sender that leaves workers idle is then visibly slower, as against a
      real Matomo. None (default) = no limit and no service time.

    Per-site ``record_statistics=False`` (a fake-only switch) answers single hits for that
    site with 503 and counts such entries in a bulk batch as excluded ("record_statistics").
    """

    def __init__(
        self,
        sites: Any = None,
        tokens: Any = None,
        version: str = "5.3.0",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_hits: bool = True,
        record_statistics: bool = True,
        raw_data_retention_days: float | None = None,
        cdt_without_token_seconds: int = CDT_WITHOUT_TOKEN_SECONDS,
        strict_cid_hex: bool = True,
        modern_auth: bool = False,
        visit_inactivity: float = VISIT_INACTIVITY_SECONDS,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
        key_limit: int | None = None,
        reuse_port: bool = False,
        listener: Any = None,
        capacity: int | None = None,
        service_time_per_hit: float = 0.0,
        service_time_per_request: float = 0.0,
    ) -> None:
        self.sites: dict[int, Site] = make_sites(sites)
        self.tokens: dict[str, Token] = make_tokens(tokens)
        self.version = version
        self.host = host
        self._port = port
        self.record_statistics = record_statistics
        self.modern_auth = modern_auth
        self.visit_inactivity = visit_inactivity
        self.clock = clock
        self.rule_config = RuleConfig(
            sites=self.sites,
            cdt_without_token_seconds=cdt_without_token_seconds,
            raw_data_retention_days=raw_data_retention_days,
            strict_cid_hex=strict_cid_hex,
        )
        self.recorder = Recorder(self.sites, keep_hits=keep_hits, clock=clock, key_limit=key_limit)
        self.fault_plan = FaultPlan()
        self.configured_latency = latency
        if latency:
            self.fault_plan.set_latency(latency)
        self.api = ReportingApi(
            sites=self.sites,
            tokens=self.tokens,
            version=version,
            now=self.clock,
            hits_for=self.hits_for,
            on_invalidate=self.recorder.record_invalidation,
        )
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1 worker")
        self.capacity = capacity
        self.service_time_per_hit = max(0.0, float(service_time_per_hit))
        self.service_time_per_request = max(0.0, float(service_time_per_request))
        # Capacity mode: the "PHP workers" (a real semaphore, or gevent's when patched).
        self._workers = threading.BoundedSemaphore(capacity) if capacity else None
        # Site-days that requests being served now start (see the stored_500 fault).
        self._starting: Counter[tuple[int, Any]] = Counter()
        self._starting_lock = threading.Lock()
        self._reuse_port = reuse_port
        self._listener = listener
        self._server: HTTPServer | None = None
        self._stopped = threading.Event()
        # Extra control handlers (the multi-process runner adds its own).
        self.control_hook: Callable[[Request], Response | None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def _make_server(self) -> HTTPServer:
        if self._server is None:
            self._server = HTTPServer(
                self.handle, self.host, self._port, reuse_port=self._reuse_port, sock=self._listener
            )
        return self._server

    def start(self) -> FakeMatomo:
        """Serve in a background thread; returns self."""
        self._make_server().start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()``."""
        self._make_server().serve_forever()

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> FakeMatomo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._make_server().port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321/``."""
        server = self._make_server()
        host = f"[{server.host}]" if ":" in server.host else server.host
        return f"http://{host}:{server.port}/"

    @property
    def tracking_url(self) -> str:
        return self.url + "matomo.php"

    @property
    def api_url(self) -> str:
        return self.url + "index.php"

    # -- configuration at run time ------------------------------------------------------------

    def add_site(self, site: Site | dict | int) -> Site:
        made = next(iter(make_sites([site]).values()))
        self.sites[made.id] = made
        with self.recorder.lock:
            self.recorder.hits.setdefault(made.id, [])
        return made

    def add_token(self, token: Token) -> Token:
        self.tokens[token.value] = token
        return token

    # -- faults -----------------------------------------------------------------------------

    def add_fault(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Add a failure rule (a ``Fault`` or its fields as keywords); returns it."""
        return self.fault_plan.add(fault if fault is not None else Fault(**kwargs))

    def fail_next(
        self, n: int = 1, status: int = 503, *, retry_after: int | str | None = None, target: str = "tracking"
    ) -> Fault:
        """The next ``n`` matching requests answer ``status`` and record nothing."""
        return self.add_fault(kind="status", status=status, retry_after=retry_after, count=n, target=target)

    def hang_next(self, n: int = 1, seconds: float = 5.0, *, target: str = "tracking") -> Fault:
        """The next ``n`` matching requests wait ``seconds``, then are processed normally."""
        return self.add_fault(kind="hang", seconds=seconds, count=n, target=target)

    def reset_next(self, n: int = 1, *, processed: bool = False, target: str = "tracking") -> Fault:
        """The next ``n`` matching requests get their connection reset without an answer
        (after recording them if ``processed``)."""
        return self.add_fault(kind="reset", count=n, processed=processed, target=target)

    def set_latency(self, seconds: float, jitter: float = 0.0, seed: int | None = 0) -> None:
        self.fault_plan.set_latency(seconds, jitter, seed)

    def clear_faults(self) -> None:
        """Remove every fault rule; latency goes back to the one given to the constructor."""
        self.fault_plan.clear()
        if self.configured_latency:
            self.fault_plan.set_latency(self.configured_latency)

    @property
    def faults(self) -> list[Fault]:
        with self.fault_plan.lock:
            return list(self.fault_plan.rules)

    # -- what was recorded ----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every hit, counter, API call and fault (sites, tokens and the configured
        latency stay)."""
        self.recorder.reset()
        self.clear_faults()

    def stats(self, *, detail: bool = False) -> dict[str, Any]:
        """Counters, as ``GET /_fake/stats`` returns them."""
        return self.recorder.snapshot(detail=detail)

    def _require_hits(self) -> None:
        if not self.recorder.keep_hits:
            raise RuntimeError("this FakeMatomo runs in count-only mode (keep_hits=False): no hits are kept")

    def hits_for(self, site_id: int | None = None) -> list[Hit]:
        """Recorded hits of one site (or all sites), in the order they were recorded."""
        self._require_hits()
        with self.recorder.lock:
            if site_id is not None:
                return list(self.recorder.hits.get(int(site_id), ()))
            return sorted((h for hits in self.recorder.hits.values() for h in hits), key=lambda h: h.seq)

    def visits(self, site_id: int = 1) -> list[Visit]:
        """Recorded hits of a site grouped into visits the way Matomo would (see
        ``model.group_visits``), sorted by start time."""
        site = self.sites[int(site_id)]
        return group_visits(self.hits_for(site.id), site, inactivity=self.visit_inactivity)

    def visitors(self, site_id: int = 1) -> set[str]:
        return {h.visitor_id for h in self.hits_for(site_id)}

    def actions_by_type(self, site_id: int | None = None) -> Counter[str]:
        """Recorded hits by kind: pageview, event, site_search, outlink, download,
        content_impression, content_interaction, goal, ecommerce_order, ecommerce_cart,
        ping, other."""
        return Counter(h.action_type for h in self.hits_for(site_id))

    @property
    def invalidations(self) -> list[dict[str, Any]]:
        """``CoreAdminHome.invalidateArchivedReports`` calls that succeeded."""
        with self.recorder.lock:
            return list(self.recorder.invalidations)

    @property
    def api_calls(self) -> list[dict[str, Any]]:
        """Reporting API calls (method and parameters, tokens removed)."""
        with self.recorder.lock:
            return list(self.recorder.api_calls)

    def now(self) -> float:
        return self.clock()

    # -- HTTP -------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | object:
        """The whole server: route one request."""
        path = req.path
        if path.startswith("/_fake/"):
            return self._control(req)
        endpoint = path.rsplit("/", 1)[-1]
        if endpoint in ("matomo.php", "piwik.php"):
            return self._tracking(req)
        if endpoint in ("index.php", ""):
            return self._reporting(req)
        return Response(404, b"Not found\n", "text/plain; charset=utf-8")

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            server = self._server
            (server.stopping if server else self._stopped).wait(seconds)

    def _form(self, req: Request) -> dict[str, str]:
        if req.method == "POST" and req.body and req.headers.get("content-type", "").lower().startswith(_FORM):
            return parse_query(req.body.decode("utf-8", "replace"))
        return {}

    def _bearer(self, req: Request) -> str:
        if not self.modern_auth:
            return ""
        auth = req.headers.get("authorization", "")
        return auth[7:].strip() if auth.startswith("Bearer ") else ""

    def _resolve(self, value: str | None, *, secure: bool) -> Token | None:
        if not value:
            return None
        token = self.tokens.get(value)
        if token is None or (token.secure_only and not secure):
            return None
        return token

    # -- tracking ---------------------------------------------------------------------------

    def _tracking(self, req: Request) -> Response | object:
        recorder = self.recorder
        body = req.body
        # Matomo's BulkTracking plugin looks for "requests" in the raw body, whatever the type.
        is_bulk = req.method == "POST" and (b'"requests"' in body or b"'requests'" in body)
        kind = "bulk" if is_bulk else "single"
        query = parse_query(req.query)
        with recorder.lock:
            counters = recorder.counters
            counters["requests"] += 1
            counters[f"{kind}_requests"] += 1
            if query.get("token_auth"):
                counters["token_in_url"] += 1

        fault, early = self._fault_before_processing(kind, is_bulk)
        if early is not None:
            return early
        workers = self._workers
        if workers is not None:
            workers.acquire()
        started = time.monotonic()
        starting: set[tuple[int, Any]] = set()
        try:
            if is_bulk:
                response, hits, starting = self._bulk(req)
            else:
                response, hits = self._single(req, query), 1
            if workers is not None:
                service = self.service_time_per_request + self.service_time_per_hit * hits
                self._wait(service - (time.monotonic() - started))
        finally:
            if starting:
                self._end_site_days(starting)
            if workers is not None:
                workers.release()
        if fault and fault.kind == "reset":
            return RESET
        if fault and fault.kind == "status":  # processed, then answered with the fault's status
            recorder.count_rejected(fault.status)
            return self._fault_response(fault, is_bulk)
        if response.status >= 400:
            recorder.count_rejected(response.status)
        return response

    # -- site-days (the stored_500 fault) ----------------------------------------------------

    def _begin_site_days(self, outcomes: list[Outcome]) -> tuple[set[tuple[int, Any]], bool]:
        """The site-days this request starts (nothing recorded on them yet, or another
        request being served starts them too), registered as in progress; and whether
        another request is starting one of them (the contended case)."""
        now = self.clock()
        days: set[tuple[int, Any]] = set()
        memo: dict[tuple[int, int], Any] = {}
        for outcome in outcomes:
            if outcome.kind != "record" or outcome.site_id not in self.sites:
                continue
            when = outcome.time if outcome.explicit_time else now
            slot = (outcome.site_id, int(when) // 900)  # every UTC offset is a multiple of 15 min
            day = memo.get(slot)
            if day is None:
                day = memo[slot] = self.sites[outcome.site_id].local_date(when)
            days.add((outcome.site_id, day))
        known = self.recorder.site_days
        with self._starting_lock:
            starting = {day for day in days if day not in known or self._starting[day]}
            contended = any(self._starting[day] for day in starting)
            for day in starting:
                self._starting[day] += 1
        return starting, contended

    def _end_site_days(self, starting: set[tuple[int, Any]]) -> None:
        with self._starting_lock:
            for day in starting:
                self._starting[day] -= 1
                if not self._starting[day]:
                    del self._starting[day]

    def _fault_before_processing(self, kind: str, is_bulk: bool) -> tuple[Fault | None, Response | object | None]:
        """This request's fault (if any) and its latency: returns the fault and, for a
        status fault or a reset before processing, the answer to give instead."""
        fault = self.fault_plan.pick(kind)
        delay = self.fault_plan.next_latency() + (fault.seconds if fault else 0.0)
        if fault:
            self.recorder.count_fault(fault.kind)
        self._wait(delay)
        if fault and fault.kind == "status" and not fault.processed:
            self.recorder.count_rejected(fault.status)
            return fault, self._fault_response(fault, is_bulk)
        if fault and fault.kind == "reset" and not fault.processed:
            return fault, RESET
        return fault, None

    def _fault_response(self, fault: Fault, is_bulk: bool) -> Response:
        headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
        if is_bulk and fault.status in (400, 500, 503):
            body = _json_bytes({"status": "error", "tracked": 0, "invalid": 0})
            return Response(fault.status, body, _JSON, headers)
        text = f"<html><body><h1>{fault.status}</h1><p>fake_matomo fault</p></body></html>\n"
        return Response(fault.status, text.encode(), "text/html; charset=utf-8", headers)

    def _image_response(self, params: dict[str, str], status: int = 200) -> Response:
        headers = [("Cache-Control", "no-store")]
        if params.get("send_image") == "0":
            return Response(204 if status == 200 else status, b"", "", headers)
        return Response(status, GIF, "image/gif", headers)

    def _text_response(self, status: int, reason: str = "", message: str = "") -> Response:
        headers = [("Cache-Control", "no-store")]
        if reason:
            # Fake-only: tells a failing test why (Matomo logs this only in debug mode).
            headers.append(("X-Fake-Matomo-Reason", f"{reason}: {message}"[:500].encode("ascii", "replace").decode()))
        return Response(status, MATOMO_TRACKER_TEXT, "text/html; charset=utf-8", headers)

    def _single(self, req: Request, query: dict[str, str]) -> Response:
        form = self._form(req)
        params = {**form, **query} if form else dict(query)  # PHP: $_GET + $_POST, GET wins
        bearer = self._bearer(req)
        if bearer:
            token = self._resolve(bearer, secure=True)
        elif form.get("token_auth"):
            token = self._resolve(form["token_auth"], secure=True)
        else:
            token = self._resolve(query.get("token_auth"), secure=False)
        params.pop("token_auth", None)
        if not self.record_statistics:
            return self._image_response(params, 503)
        if not params:
            # Matomo: a bare GET is the "this is Matomo" page (200); anything else that
            # tracked nothing is a 400 with the same text.
            is_bare_get = req.method == "GET" and not req.query
            return self._text_response(200 if is_bare_get else 400)
        outcome = self._evaluate(params, token, req)
        if outcome.kind == "disabled":
            return self._image_response(params, 503)
        result = self.recorder.commit([outcome], bulk=False)
        if outcome.kind == "invalid":
            return self._text_response(400, outcome.reason, outcome.message)
        if result.conflict is not None:
            message = (
                "An exception occurred: SQLSTATE[HY000]: General error: Error query: the hit of visitor "
                f"{outcome.visitor_id} at {int(outcome.time)} is older than the visit's last action at "
                f"{int(result.conflict_latest)} (fake_matomo backdating rule)\n"
            )
            return Response(500, message.encode(), "text/html; charset=utf-8", [("X-Fake-Matomo-Reason", "backdated")])
        return self._image_response(params)

    def _evaluate(self, params: dict[str, str], token: Token | None, req: Request) -> Outcome:
        headers = req.headers
        return evaluate(
            params,
            config=self.rule_config,
            now=self.clock(),
            token=token,
            client_ip=req.client_ip,
            header_user_agent=headers.get("user-agent", ""),
            header_language=headers.get("accept-language", ""),
        )

    def _bulk(self, req: Request) -> tuple[Response, int, set[tuple[int, Any]]]:
        """The answer, the number of entries (for the service time), and the site-days it
        started (registered while a ``stored_500`` rule is active; the caller ends them)."""
        try:
            data = json.loads(req.body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            data = {}
        entries = data.get("requests")
        if not isinstance(entries, list):
            entries = []
        if not self.record_statistics:
            return (
                Response(200, _json_bytes({"status": "success", "tracked": 0, "invalid": 0}), _JSON),
                len(entries),
                set(),
            )
        json_value = data.get("token_auth") if isinstance(data.get("token_auth"), str) else ""
        bearer = self._bearer(req)
        # Matomo 5.3: a secure-only token in the JSON body is not "sent securely" (fixed by
        # PR #23335, emulated by modern_auth).
        json_token = (
            self._resolve(bearer, secure=True) if bearer else self._resolve(json_value, secure=self.modern_auth)
        )
        outcomes: list[Outcome] = []
        dropped = 0
        in_entry = 0
        for entry in entries:
            if isinstance(entry, str):
                # Matomo: parse_url($entry)['query'] must be non-empty, else the entry is dropped.
                query = entry.partition("?")[2].partition("#")[0] if "?" in entry else ""
                if not query:
                    dropped += 1
                    continue
                params = parse_query(query)
            elif isinstance(entry, dict):
                params = {str(k): _scalar(v) for k, v in entry.items()}
            elif isinstance(entry, list):  # a PHP array with numeric keys: no idsite
                params = {str(i): _scalar(v) for i, v in enumerate(entry)}
            else:  # null, numbers: Matomo builds an empty request, counted as tracked
                params = {}
            token = json_token
            entry_value = params.pop("token_auth", "")
            if entry_value:
                in_entry += 1
                if token is None:
                    token = self._resolve(entry_value, secure=self.modern_auth)
            outcomes.append(self._evaluate(params, token, req))
        if dropped or in_entry:
            with self.recorder.lock:
                self.recorder.counters["dropped_bulk_entries"] += dropped
                self.recorder.counters["token_in_bulk_entry"] += in_entry
        starting: set[tuple[int, Any]] = set()
        contended = False
        if self.fault_plan.has_stored_500():
            starting, contended = self._begin_site_days(outcomes)
        result = self.recorder.commit(outcomes, bulk=True)
        show_indices = json_token is not None and json_token.superuser
        if result.conflict is None and starting:
            with self.recorder.lock:
                self.recorder.site_days.update(starting)
            fault = self.fault_plan.pick("bulk", starts_site_day=True, contended=contended)
            if fault is not None:
                # Recorded in full, answered like Matomo 5.0.2 after a swallowed deadlock.
                self.recorder.count_fault(fault.kind)
                invalid = sum(1 for o in outcomes if o.kind == "invalid")
                body: dict[str, Any] = {"status": "error", "tracked": len(outcomes) - invalid, "invalid": invalid}
                headers = [("X-Fake-Matomo-Reason", "site-day deadlock: stored, then the commit failed")]
                return Response(500, _json_bytes(body), _JSON, headers), len(entries), starting
        if result.conflict is not None:
            before = outcomes[: result.conflict]
            body = {
                "status": "error",
                "tracked": sum(1 for o in before if o.kind != "invalid"),
                "invalid": sum(1 for o in before if o.kind == "invalid"),
            }
            if show_indices:
                body["invalid_indices"] = [i for i, o in enumerate(before) if o.kind == "invalid"]
            response = Response(500, _json_bytes(body), _JSON, [("X-Fake-Matomo-Reason", "backdated")])
            return response, len(entries), starting
        invalid_indices = [i for i, o in enumerate(outcomes) if o.kind == "invalid"]
        if str(data.get("send_image", "1")) == "0":
            return Response(204, b"", ""), len(entries), starting
        body = {"status": "success", "tracked": len(outcomes) - len(invalid_indices), "invalid": len(invalid_indices)}
        if show_indices:
            body["invalid_indices"] = invalid_indices
        return Response(200, _json_bytes(body), _JSON), len(entries), starting

    # -- Reporting API ------------------------------------------------------------------------

    def _reporting(self, req: Request) -> Response | object:
        query = parse_query(req.query)
        form = self._form(req)
        params = {**form, **query}
        if params.get("module") != "API":
            return Response(200, _LOGIN_PAGE, "text/html; charset=utf-8")
        recorder = self.recorder
        with recorder.lock:
            recorder.counters["api_requests"] += 1
            if query.get("token_auth"):
                recorder.counters["token_in_url"] += 1
        fault, early = self._fault_before_processing("api", False)
        if early is not None:
            return early
        status, payload = self._api_call(req, query, form, params)
        if fault and fault.kind == "reset":
            return RESET
        return Response(status, _json_bytes(payload), _JSON)

    def _api_call(self, req: Request, query: dict[str, str], form: dict[str, str], params: dict[str, str]):
        bearer = self._bearer(req)
        if bearer:
            value, secure = bearer, True
        elif form.get("token_auth"):
            value, secure = form["token_auth"], True
        else:
            value, secure = query.get("token_auth", ""), False
        method = params.get("method", "")
        clean = {k: v for k, v in params.items() if k != "token_auth"}
        self.recorder.record_api_call(method, clean)
        token = None
        if value:
            token = self._resolve(value, secure=secure)
            if token is None:
                message = MSG_AUTH_FAILED_SECURE if secure else MSG_AUTH_FAILED_INSECURE
                return 401, {"result": "error", "message": message}
        try:
            result = self.api.call(method, Caller(token=token, token_value=value, secure=secure), clean)
        except ApiError as exc:
            return exc.status, {"result": "error", "message": str(exc)}
        if isinstance(result, (str, int, float, bool)) or result is None:
            return 200, {"value": result}
        return 200, result

    # -- control endpoints ------------------------------------------------------------------------

    def _control(self, req: Request) -> Response:
        if self.control_hook is not None:
            hooked = self.control_hook(req)
            if hooked is not None:
                return hooked
        try:
            status, payload = self.control(req.method, req.path, parse_query(req.query), req.body)
        except (ValueError, TypeError, KeyError) as exc:
            status, payload = 400, {"error": str(exc)}
        except RuntimeError as exc:
            status, payload = 409, {"error": str(exc)}
        return Response(status, _json_bytes(payload), _JSON)

    def control(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        """The ``/_fake/...`` endpoints, for tests and benchmarks in another process."""
        name = path[len("/_fake/") :].strip("/")
        if name == "health":
            return 200, {"ok": True, "version": self.version, "url": self.url}
        if name == "stats":
            return 200, self.stats(detail=query.get("detail") in ("1", "true"))
        if name == "reset" and method == "POST":
            self.reset()
            return 200, {"ok": True}
        if name == "faults":
            if method in ("POST", "PUT"):
                self.configure_faults(json.loads(body or b"{}"))
            elif method == "DELETE":
                self.clear_faults()
            return 200, self.fault_plan.describe()
        if name == "hits":
            site = int(query["idsite"]) if query.get("idsite") else None
            hits = self.hits_for(site)
            offset = int(query.get("offset", 0))
            limit = int(query.get("limit", len(hits)))
            return 200, {"count": len(hits), "hits": [h.as_dict() for h in hits[offset : offset + limit]]}
        if name == "visits":
            visits = self.visits(int(query.get("idsite", 1)))
            return 200, {"count": len(visits), "visits": [v.as_dict() for v in visits]}
        if name == "actions":
            site = int(query["idsite"]) if query.get("idsite") else None
            return 200, dict(self.actions_by_type(site))
        if name == "invalidations":
            return 200, self.invalidations
        if name == "api-calls":
            return 200, self.api_calls
        return 404, {"error": f"unknown control endpoint {method} {path}"}

    def configure_faults(self, spec: Any) -> None:
        """Apply a fault configuration (the JSON ``POST /_fake/faults`` accepts):

        * a fault object (``{"kind": "status", "status": 503, "count": 2}``) or a list of them;
        * or ``{"clear": true, "latency": 0.05, "latency_jitter": 0.01, "add": [fault, ...]}``."""
        if isinstance(spec, list):
            faults: Iterable[Any] = spec
            spec = {}
        elif isinstance(spec, dict) and ({"kind", "status", "seconds", "count", "target"} & set(spec)):
            faults = [spec]
            spec = {}
        elif isinstance(spec, dict):
            faults = spec.get("add") or spec.get("faults") or []
        else:
            raise ValueError("fault configuration must be a JSON object or list")
        parsed = [Fault.from_dict(dict(f)) for f in faults]
        if spec.get("clear"):
            self.clear_faults()
        if "latency" in spec or "latency_jitter" in spec:
            self.set_latency(float(spec.get("latency", 0.0)), float(spec.get("latency_jitter", 0.0)))
        for fault in parsed:
            self.fault_plan.add(fault)
