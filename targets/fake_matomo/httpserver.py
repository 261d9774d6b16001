"""A small HTTP/1.1 server: keep-alive, one thread per connection, raw sockets.

Written for speed and for control over the connection (faults need to hang a request or
reset the TCP connection without an answer), not for the open Internet: it only binds to
loopback by default, parses just what tracking clients send (Content-Length and chunked
bodies, ``Expect: 100-continue``) and trusts its clients.

The same code serves in two modes: with real threads (the default, safe inside any test
process) or, in the command-line server, under gevent's monkey-patching, where each
"thread" is a greenlet and the whole server runs on one core at a multiple of the speed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from email.utils import formatdate

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
IDLE_TIMEOUT_SECONDS = 75.0

_REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Request:
    __slots__ = ("body", "client_ip", "headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, client_ip: str):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client_ip = client_ip


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/html; charset=utf-8",
        headers: list[tuple[str, str]] | None = None,
    ):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


# Returned by the app to close the connection without any answer (TCP reset).
RESET = object()

App = Callable[[Request], "Response | object"]


class _DateHeader:
    """The Date header, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.value = formatdate(now, usegmt=True).encode("ascii")
            self.second = now
        return self.value


class HTTPServer:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one) until ``stop()``."""

    def __init__(
        self,
        app: App,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        sock: socket.socket | None = None,
    ) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self._date = _DateHeader()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._accept_thread: threading.Thread | None = None
        if sock is None:
            sock = make_listener(host, port, reuse_port=reuse_port, backlog=backlog)
        sock.settimeout(0.5)  # a fallback: stop() also wakes accept() directly
        self.listener = sock
        self.host, self.port = sock.getsockname()[:2]

    @property
    def stopping(self) -> threading.Event:
        """Set when the server stops; hangs wait on it so ``stop()`` never waits for them."""
        return self._stopping

    def start(self) -> HTTPServer:
        self._accept_thread = threading.Thread(target=self.serve_forever, name="fake-matomo-accept", daemon=True)
        self._accept_thread.start()
        return self

    def serve_forever(self) -> None:
        listener = self.listener
        while not self._stopping.is_set():
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)  # e.g. EMFILE: let connections drain instead of spinning
                continue
            threading.Thread(
                target=self._serve_connection, args=(conn, addr[0]), name="fake-matomo-conn", daemon=True
            ).start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        # shutdown() wakes a thread blocked in accept() on Linux; close() alone does not.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._accept_thread is not None and self._accept_thread is not threading.current_thread():
            self._accept_thread.join(timeout)

    def _serve_connection(self, conn: socket.socket, client_ip: str) -> None:
        with self._conn_lock:
            self._connections.add(conn)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self.idle_timeout)
            self._loop(conn, client_ip)
        except (OSError, ValueError):
            pass
        finally:
            with self._conn_lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _loop(self, conn: socket.socket, client_ip: str) -> None:
        recv = conn.recv
        buf = b""
        while not self._stopping.is_set():
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self._send_simple(conn, 431)
                    return
                chunk = recv(65536)
                if not chunk:
                    return
                buf += chunk
                end = buf.find(b"\r\n\r\n")
            head = buf[:end].decode("latin-1")
            buf = buf[end + 4 :]
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._send_simple(conn, 400)
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            keep_alive = (
                headers.get("connection", "").lower() != "close"
                if version == "HTTP/1.1"
                else headers.get("connection", "").lower() == "keep-alive"
            )
            if "chunked" in headers.get("transfer-encoding", "").lower():
                if headers.get("expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body, buf = self._read_chunked(conn, buf)
                if body is None:
                    return
            else:
                length_text = headers.get("content-length")
                length = int(length_text) if length_text and length_text.isdigit() else 0
                if length > MAX_BODY_BYTES:
                    self._send_simple(conn, 413)
                    return
                if length and len(buf) < length and headers.get("expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                while len(buf) < length:
                    chunk = recv(max(65536, length - len(buf)))
                    if not chunk:
                        return
                    buf += chunk
                body = buf[:length]
                buf = buf[length:]
            if target.startswith(("http://", "https://")):
                target = "/" + target.split("/", 3)[-1] if target.count("/") >= 3 else "/"
            path, _, query = target.partition("?")
            query = query.partition("#")[0]
            response = self.app(Request(method.upper(), path, query, headers, body, client_ip))
            if not isinstance(response, Response):  # RESET: drop the connection unanswered
                reset_connection(conn)
                return
            self._send(conn, response, keep_alive, method.upper() == "HEAD")
            if not keep_alive:
                return

    def _send(self, conn: socket.socket, response: Response, keep_alive: bool, head_only: bool) -> None:
        body = response.body
        status = response.status
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode("ascii")),
            b"Date: " + self._date.get() + b"\r\n",
            b"Server: fake-matomo\r\n",
        ]
        if status != 204:
            parts.append(b"Content-Length: %d\r\n" % len(body))
            if response.content_type:
                parts.append(b"Content-Type: " + response.content_type.encode("latin-1") + b"\r\n")
        for name, value in response.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if body and status != 204 and not head_only:
            parts.append(body)
        conn.sendall(b"".join(parts))

    def _send_simple(self, conn: socket.socket, status: int) -> None:
        with contextlib.suppress(OSError):
            self._send(conn, Response(status, _REASONS.get(status, "").encode()), False, False)

    @staticmethod
    def _read_chunked(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return None, b""
                buf += chunk
            size_line, _, buf = buf.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                return None, b""
            if size == 0:
                # Trailers (if any) end with an empty line.
                while True:
                    while b"\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return bytes(body), b""
                        buf += chunk
                    line, _, buf = buf.partition(b"\r\n")
                    if not line:
                        return bytes(body), buf
            while len(buf) < size + 2:
                chunk = conn.recv(65536)
                if not chunk:
                    return None, b""
                buf += chunk
            body += buf[:size]
            if len(body) > MAX_BODY_BYTES:
                return None, b""
            buf = buf[size + 2 :]


def make_listener(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def reset_connection(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP reset, not an orderly close."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.close()


def run_in_background(function: Callable[[], object]) -> None:
    """Run ``function`` soon without blocking the caller, even from a signal handler under
    gevent (which runs in the event loop, where starting a thread would block)."""
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        import gevent

        gevent.spawn(function)
    else:
        threading.Thread(target=function, daemon=True).start()
