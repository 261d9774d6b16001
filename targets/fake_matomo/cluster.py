"""Several fake Matomo processes on one port (SO_REUSEPORT), for benchmarks on big machines.

The kernel spreads incoming connections over the workers. Each worker also listens on a
private loopback port, and the control endpoints on the public port fan out to all of
them: ``GET /_fake/stats`` sums the counters, ``POST /_fake/reset`` and
``POST /_fake/faults`` reach every worker, ``/_fake/hits``, ``/visits`` and ``/actions``
merge what the workers recorded. A fault's ``count`` is shared through memory, so "the
next 3 requests" means 3 across the cluster.

Per-visitor rules (backdating, duplicates, repeated order ids) only see the hits that
reached the same worker, because a visitor's requests may arrive on different
connections. Use one worker when a test depends on them; a single gevent worker already
sustains several thousand requests per second.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import signal
from typing import Any

from .faults import Fault
from .httpserver import HTTPServer, Request, Response, make_listener, run_in_background
from .model import Hit, group_visits
from .rules import parse_query
from .server import FakeMatomo

SHARED_SLOTS = 4096
_JSON = "application/json; charset=utf-8"


def run_cluster(kwargs: dict[str, Any], *, host: str, port: int, workers: int) -> int:
    """Start ``workers`` processes serving ``FakeMatomo(**kwargs)``; print the URL; wait."""
    first = make_listener(host, port, reuse_port=True)
    port = first.getsockname()[1]
    public = [first] + [make_listener(host, port, reuse_port=True) for _ in range(workers - 1)]
    private = [make_listener("127.0.0.1", 0) for _ in range(workers)]
    peer_ports = [sock.getsockname()[1] for sock in private]
    shared = multiprocessing.Array("q", SHARED_SLOTS)
    next_slot = multiprocessing.Value("q", 0)
    display_host = f"[{host}]" if ":" in host else host
    print(f"http://{display_host}:{port}/", flush=True)

    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                for other in public + private:
                    if other not in (public[index], private[index]):
                        other.close()
                _serve_worker(kwargs, public[index], private[index], peer_ports, shared, next_slot)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for sock in public + private:
        sock.close()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        status = status or os.waitstatus_to_exitcode(code)
    return status


def _serve_worker(kwargs, public_sock, private_sock, peer_ports, shared, next_slot) -> None:
    matomo = FakeMatomo(listener=public_sock, **kwargs)
    matomo.fault_plan.shared_counters = shared
    control = ClusterControl(matomo, peer_ports, next_slot)
    matomo.control_hook = control.handle_public
    private = HTTPServer(control.handle_private, sock=private_sock).start()

    def stop(signum: int, frame: object) -> None:
        # Under gevent the handler runs in the event loop, where nothing may block (join).
        def stop_servers() -> None:
            private.stop()
            matomo.stop()

        run_in_background(stop_servers)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    matomo.serve_forever()


def _merge(total: Any, part: Any) -> Any:
    """Sum numbers, merge dicts key by key; anything else keeps the first value."""
    if isinstance(total, bool) or isinstance(part, bool):
        return total
    if isinstance(total, (int, float)) and isinstance(part, (int, float)):
        return total + part
    if isinstance(total, dict) and isinstance(part, dict):
        merged = dict(total)
        for key, value in part.items():
            merged[key] = _merge(merged[key], value) if key in merged else value
        return merged
    if isinstance(total, list) and isinstance(part, list):
        return total + part
    return total


class ClusterControl:
    """Control endpoints of one worker in a cluster."""

    def __init__(self, matomo: FakeMatomo, peer_ports: list[int], next_slot: Any) -> None:
        self.matomo = matomo
        self.peer_ports = peer_ports
        self.next_slot = next_slot

    def handle_private(self, req: Request) -> Response:
        """The private port: this worker's own control endpoints, never fanned out."""
        if not req.path.startswith("/_fake/"):
            return Response(404, b"", "")
        try:
            status, payload = self.matomo.control(req.method, req.path, parse_query(req.query), req.body)
        except (ValueError, TypeError, KeyError) as exc:
            status, payload = 400, {"error": str(exc)}
        except RuntimeError as exc:
            status, payload = 409, {"error": str(exc)}
        return Response(status, json.dumps(payload).encode(), _JSON)

    def _each(self, method: str, path: str, body: bytes = b"") -> list[tuple[int, Any]]:
        results = []
        for port in self.peer_ports:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                results.append((response.status, json.loads(response.read() or b"null")))
            finally:
                connection.close()
        return results

    def _first_error(self, results: list[tuple[int, Any]]) -> tuple[int, Any] | None:
        return next(((status, data) for status, data in results if status >= 400), None)

    def handle_public(self, req: Request) -> Response | None:
        name = req.path[len("/_fake/") :].strip("/")
        query = parse_query(req.query)
        try:
            status, payload = self._public(req.method, name, query, req.body, req.query)
        except (ValueError, TypeError, KeyError) as exc:
            status, payload = 400, {"error": str(exc)}
        return Response(status, json.dumps(payload).encode(), _JSON)

    def _public(self, method: str, name: str, query: dict[str, str], body: bytes, raw_query: str) -> tuple[int, Any]:
        suffix = f"?{raw_query}" if raw_query else ""
        if name == "health":
            return 200, {"ok": True, "version": self.matomo.version, "workers": len(self.peer_ports)}
        if name == "faults" and method in ("POST", "PUT"):
            return self._broadcast_faults(json.loads(body or b"{}"))
        if name in ("reset", "faults", "stats", "actions", "invalidations", "api-calls"):
            results = self._each(method, f"/_fake/{name}{suffix}", body)
            error = self._first_error(results)
            if error:
                return error
            if name in ("reset", "faults"):
                return results[0]
            merged = results[0][1]
            for _, data in results[1:]:
                merged = _merge(merged, data)
            return 200, merged
        if name in ("hits", "visits"):
            site = query.get("idsite")
            results = self._each("GET", "/_fake/hits" + (f"?idsite={site}" if site else ""))
            error = self._first_error(results)
            if error:
                return error
            hits = [Hit(**{k: v for k, v in h.items() if k != "action_type"}) for _, d in results for h in d["hits"]]
            hits.sort(key=lambda h: h.time)
            if name == "hits":
                return 200, {"count": len(hits), "hits": [h.as_dict() for h in hits]}
            visits = group_visits(hits, self.matomo.sites[int(site or 1)], inactivity=self.matomo.visit_inactivity)
            return 200, {"count": len(visits), "visits": [v.as_dict() for v in visits]}
        return 404, {"error": f"unknown control endpoint {method} /_fake/{name}"}

    def _broadcast_faults(self, spec: Any) -> tuple[int, Any]:
        """Parse once here, give every counted rule a shared slot, send the same rules to all."""
        if isinstance(spec, list):
            spec = {"add": spec}
        elif isinstance(spec, dict) and ({"kind", "status", "seconds", "count", "target"} & set(spec)):
            spec = {"add": [spec]}
        elif not isinstance(spec, dict):
            raise ValueError("fault configuration must be a JSON object or list")
        rules = []
        for item in spec.get("add") or spec.get("faults") or []:
            fault = Fault.from_dict(dict(item))
            data = fault.as_dict()
            data.pop("fired", None)
            if fault.count is not None:
                with self.next_slot.get_lock():
                    data["slot"] = self.next_slot.value % SHARED_SLOTS
                    self.next_slot.value += 1
                self.matomo.fault_plan.shared_counters[data["slot"]] = 0
            rules.append(data)
        normalized = {key: spec[key] for key in ("clear", "latency", "latency_jitter") if key in spec}
        normalized["add"] = rules
        results = self._each("POST", "/_fake/faults", json.dumps(normalized).encode())
        return self._first_error(results) or results[0]
