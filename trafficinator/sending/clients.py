"""HTTP transports for the sender: one keep-alive connection pool per target.

Both answer ``post(body, content_type) -> (status, body, retry_after)`` and raise only
``TransportTimeout`` or ``TransportError``, whose messages never contain request bodies
(where the token is).

Measured on the loader's hot path (single hits, one core, loopback fake Matomo in another
process; see ``trafficinator.bench.sending``): geventhttpclient used ~0.11-0.15 s of loader CPU
per 1,000 hits, requests with a shared Session under gevent ~1.0-1.25 s, about eight
times more. So geventhttpclient is the default; requests stays selectable for comparison
only, and needs a monkey-patched process (its sockets are the standard library's).
"""

from __future__ import annotations

import errno
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent import get_hub, getcurrent
from gevent.monkey import get_original
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

USER_AGENT = "Trafficinator (synthetic traffic for Matomo)"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
CLIENTS = ("geventhttpclient", "requests")
_REQUEST_TARGET = re.compile(r"[^\x00-\x20\x7f]+")


class TransportError(Exception):
    """The request got no HTTP answer: refused, reset, closed, DNS... (a network error).

    ``sent``: the whole request went out before it failed, so the server may have
    processed it (a reset or a timeout while waiting for the answer). False when it
    never left (refused, DNS, a broken connection while writing)."""

    def __init__(self, message: str = "", *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class TransportTimeout(TransportError):
    """No complete answer within the timeout (connect, any read, or the whole request)."""


class _Deadline(Exception):
    """Thrown into a request past its deadline (see _Watchdog); turned into TransportTimeout."""


class _Watchdog:
    """Bounds the whole time of every request in flight with one timer instead of a
    gevent.Timeout (and a timer start and stop) per request and per socket wait: a
    request past its deadline gets ``_Deadline`` thrown in where it waits, as a Timeout
    would. The timer is due at the earliest deadline in flight and is moved only when it
    fires: every request has the same timeout, so one that starts later is due later and
    never needs the timer moved. (A periodic check every eighth of the timeout, at most
    0.5 s, woke a sender that waited for slow answers ~0.2 times per bulk request against
    the benchmark's Matomo-sized fake, and each wake-up of an idle process is costly.)
    The timer runs in the hub of the thread that first sent (``ref=False``: it never
    keeps a loop alive); a request from another thread, or after ``close``, gets a
    gevent.Timeout of its own."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._deadlines: dict[object, float] = {}
        self._hub: Any = None
        self._timer: Any = None
        self._timer_after = 0.0  # the delay self._timer was made with (libev fixes it then)
        self._closed = False

    def watch(self) -> object:
        """Watch the calling greenlet's request; returns what ``unwatch`` takes."""
        hub = get_hub()
        if self._hub is None and not self._closed:
            self._hub = hub
        if self._closed or hub is not self._hub:
            return gevent.Timeout.start_new(self.timeout, _Deadline)
        current = getcurrent()
        self._deadlines[current] = time.monotonic() + self.timeout
        timer = self._timer
        if timer is None or not timer.active:  # nothing due earlier: due at this deadline
            self._arm(self.timeout)
        return current

    def unwatch(self, token: object) -> None:
        if isinstance(token, gevent.Timeout):
            token.close()
        else:
            self._deadlines.pop(token, None)

    def _arm(self, seconds: float) -> None:
        """Start the timer ``seconds`` from now (stopping it first if it runs)."""
        timer = self._timer
        if timer is not None and timer.active:
            timer.stop()
        if timer is None or self._timer_after != seconds:
            if timer is not None:
                timer.close()
            timer = self._timer = self._hub.loop.timer(seconds, 0, ref=False)
            self._timer_after = seconds
        timer.start(self._check)

    def _check(self) -> None:
        deadlines = self._deadlines
        now = time.monotonic()
        for request, deadline in list(deadlines.items()):
            # Still the same request (an earlier throw ran greenlets that may have moved on).
            if deadline <= now and deadlines.get(request) == deadline:
                del deadlines[request]
                request.throw(_Deadline)  # type: ignore[attr-defined]  # a greenlet
        if deadlines and not self._closed:
            # The loop's clock may lag the monotonic one a little: a timer that fired a
            # bit early is simply due again at the same deadline.
            self._arm(max(0.001, min(deadlines.values()) - time.monotonic()))

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
        self._deadlines.clear()


def _describe(exc: BaseException) -> str:
    # Class name and errno text only: socket errors carry no request data, but keep it short.
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


# The real select(): gevent's (in a monkey-patched process) yields to the hub even with a
# zero timeout, a full loop round per request just to check an idle socket.
_select = get_original("select", "select")


def _idle_socket_alive(sock: socket.socket | None) -> bool:
    """geventhttpclient's check of a pooled keep-alive socket before reuse (a socket that
    is readable while idle got a FIN or stray data: not reusable), without the yield."""
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        return fd >= 0 and not _select([fd], [], [], 0.0)[0]
    except (OSError, ValueError):
        return False


class _Pool(ConnectionPool):
    def _is_socket_alive(self, sock: socket.socket | None) -> bool:
        return _idle_socket_alive(sock)


class _SSLPool(SSLConnectionPool):
    def _is_socket_alive(self, sock: socket.socket | None) -> bool:
        return _idle_socket_alive(sock)


_RECV_SIZE = 65536
_MAX_HEAD = 65536  # bytes of status line and headers at most
_NO_BODY = frozenset((204, 304))


def _more(sock: socket.socket, buf: bytearray) -> None:
    data = sock.recv(_RECV_SIZE)
    if not data:
        raise HTTPParseError("connection closed before the end of the answer")
    buf += data


def read_answer(sock: socket.socket, first: bytes | None = None) -> tuple[int, bytes, str | None, bool]:
    """Read one HTTP/1.x answer from ``sock``: (status, body, Retry-After, reusable).

    What a tracking request needs and no more: the status line, the headers that frame
    the body (Content-Length, Transfer-Encoding: chunked, else until the server closes),
    Connection and Retry-After (None unless given exactly once); interim 1xx answers are
    skipped. ``reusable``: keep-alive and nothing read beyond the answer. Raises
    HTTPParseError for a malformed answer or one cut short, HTTPConnectionClosed when the
    connection closed before any byte of it.

    Replaces geventhttpclient's parser, whose Python callbacks per header field and value
    cost more than the rest of reading an answer."""
    data = sock.recv(_RECV_SIZE) if first is None else first  # first: already received
    if not data:
        raise HTTPConnectionClosed("connection closed.")
    lines, status, rest = _read_head(sock, data)
    length: int | None = None
    chunked = False
    other_encoding = False
    connection = b""
    retry_after: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise HTTPParseError(f"invalid header line {line[:40]!r}")
        name = name.lower()
        if name not in _FRAMING:
            continue
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise HTTPParseError("invalid Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            codings = [coding.strip() for coding in value.lower().split(b",")]
            chunked = codings[-1] == b"chunked"
            other_encoding = not chunked
        elif name == b"connection":
            connection += b"," + value.lower()
        else:
            retry_after.append(value)
    if (chunked or other_encoding) and length is not None:
        raise HTTPParseError("both Content-Length and Transfer-Encoding")
    http10 = lines[0].split(None, 1)[0] == b"HTTP/1.0"
    if connection:
        tokens = {token.strip() for token in connection.split(b",")}
        keep_alive = b"keep-alive" in tokens if http10 else b"close" not in tokens
    else:
        keep_alive = not http10
    advice = retry_after[0].decode("latin-1") if len(retry_after) == 1 else None
    if status in _NO_BODY:
        return status, b"", advice, keep_alive and not rest
    if length is not None and not chunked and len(rest) >= length:  # the usual: all read already
        return status, bytes(rest[:length]), advice, keep_alive and len(rest) == length
    buf = rest if isinstance(rest, bytearray) else bytearray(rest)
    if chunked:
        body = _read_chunked(sock, buf)
    elif length is not None:
        while len(buf) < length:
            _more(sock, buf)
        body = bytes(buf[:length])
        del buf[:length]
    else:  # the answer ends when the server closes the connection
        while data := sock.recv(_RECV_SIZE):
            buf += data
        body = bytes(buf)
        buf.clear()
        keep_alive = False
    return status, body, advice, keep_alive and not buf


_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection", b"retry-after"))


def _read_head(sock: socket.socket, data: bytes) -> tuple[list[bytes], int, bytes | bytearray]:
    """The head of a final (not 1xx) answer that starts with ``data``: its lines, its
    status, and what was read after it. Usually the whole head is in ``data``."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        lines = data[:end].split(b"\r\n")
        status = _status(lines[0])
        if status >= 200:
            return lines, status, data[end + 4 :]
        buf = bytearray(data[end + 4 :])
    else:
        buf = bytearray(data)
    while True:  # until the head of a final answer is complete
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise HTTPParseError("answer head too long")
            _more(sock, buf)
            continue
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        status = _status(lines[0])
        if status >= 200:
            return lines, status, buf


def _status(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise HTTPParseError(f"invalid status line {line[:40]!r}")
    return int(parts[1])


def _read_chunked(sock: socket.socket, buf: bytearray) -> bytes:
    """A chunked body from ``buf`` (and the socket); consumes it and its trailers."""
    body = bytearray()
    while True:
        end = buf.find(b"\r\n")
        while end < 0:
            _more(sock, buf)
            end = buf.find(b"\r\n")
        size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HTTPParseError(f"invalid chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise HTTPParseError("invalid chunk size")
        del buf[: end + 2]
        if size == 0:
            # Trailers until an empty line.
            while True:
                end = buf.find(b"\r\n")
                while end < 0:
                    _more(sock, buf)
                    end = buf.find(b"\r\n")
                del buf[: end + 2]
                if end == 0:
                    return bytes(body)
        while len(buf) < size + 2:
            _more(sock, buf)
        if buf[size : size + 2] != b"\r\n":
            raise HTTPParseError("chunk not followed by CRLF")
        body += buf[:size]
        del buf[: size + 2]


class GeventTransport:
    """geventhttpclient's keep-alive connection pool (``concurrency`` connections at
    most), the request head prepared once and a lean answer reader (``read_answer``).

    geventhttpclient's ``HTTPClient.request`` merges and validates header objects on every
    call; writing the head ourselves cut the loader's CPU per single hit by ~25 %
    (measured ~105 against ~135 us). POSTs are never retried here (the server may have
    processed them): the sender decides."""

    def __init__(self, url: str, *, concurrency: int, timeout: float, connect_timeout: float | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("tracking URL must be http(s)://host/.../matomo.php")
        secure = parts.scheme == "https"
        host = parts.hostname
        default_port = 443 if secure else 80
        port = parts.port or default_port
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not _REQUEST_TARGET.fullmatch(target):
            raise ValueError("tracking URL path must not contain spaces or control characters")
        pool_class = _SSLPool if secure else _Pool
        self._plain = not secure
        self._pool = pool_class(
            host,
            port,
            host,
            port,
            size=concurrency,
            # No timeout per send and receive (each would start a timer): the watchdog
            # bounds the whole request, connecting included.
            network_timeout=None,  # type: ignore[arg-type]  # settimeout(None): no timeout
            connection_timeout=connect_timeout or timeout,
        )
        self.timeout = timeout
        self._watchdog = _Watchdog(timeout)
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        common = f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
        self._heads = {
            content_type: (common + f"Content-Type: {content_type}\r\nContent-Length: ").encode("latin-1")
            for content_type in (FORM, JSON)
        }

    def post(self, body: bytes, content_type: str) -> tuple[int, bytes, str | None]:
        # connection_timeout bounds the connect; the watchdog the whole request (a server
        # trickling its answer byte by byte too).
        watchdog = self._watchdog
        watched = watchdog.watch()
        progress = [False]  # set once the whole request is written
        try:
            return self._exchange(self._heads[content_type] + b"%d\r\n\r\n" % len(body) + body, progress)
        except _Deadline:
            raise TransportTimeout(f"no complete answer within {self.timeout:g} s", sent=progress[0]) from None
        except TimeoutError as exc:
            message = f"timed out after {self.timeout:g} s ({_describe(exc)})"
            raise TransportTimeout(message, sent=progress[0]) from None
        except (OSError, HTTPParseError) as exc:
            raise TransportError(_describe(exc), sent=progress[0]) from None
        finally:
            watchdog.unwatch(watched)

    def _exchange(self, request: bytes, progress: list[bool]) -> tuple[int, bytes, str | None]:
        pool = self._pool
        sock: Any = pool.get_socket()  # a gevent socket: ._sock is the real one, non-blocking
        try:
            if self._plain:
                # gevent's sendall costs a getsockopt and a few Python calls per request;
                # a tracking request nearly always fits the send buffer at once.
                try:
                    sent = sock._sock.send(request)  # the real non-blocking socket
                except BlockingIOError:
                    sent = 0
                if sent < len(request):
                    sock.sendall(request[sent:])
            else:
                sock.sendall(request)
            progress[0] = True
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                pool.release_socket(sock)
                raise
            # The server may have answered early (e.g. 413 for a big batch) and closed:
            # read that answer rather than hide it behind the broken pipe.
        except BaseException:
            pool.release_socket(sock)
            raise
        try:
            first = None
            if self._plain:
                # The answer is hardly ever there yet: wait until the socket is readable
                # rather than try first (gevent's recv raises and catches EAGAIN then waits).
                sock._wait(sock._read_event)
                try:
                    first = sock._sock.recv(_RECV_SIZE)
                except BlockingIOError:  # woken without data after all: read_answer waits
                    first = None
            status, data, retry_after, reusable = read_answer(sock, first)
        except BaseException:
            pool.release_socket(sock)
            raise
        if reusable:
            pool.return_socket(sock)
        else:
            pool.release_socket(sock)
        return status, data, retry_after

    def close(self) -> None:
        self._pool.close()
        self._watchdog.close()


class RequestsTransport:
    """requests with one shared Session (slow under gevent; kept for comparison)."""

    def __init__(self, url: str, *, concurrency: int, timeout: float, connect_timeout: float | None = None) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self._requests = requests
        self.url = url
        self.timeouts = (connect_timeout or timeout, timeout)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, pool_block=True, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._headers = {FORM: {"Content-Type": FORM}, JSON: {"Content-Type": JSON}}

    def post(self, body: bytes, content_type: str) -> tuple[int, bytes, str | None]:
        requests = self._requests
        try:
            response = self._session.post(
                self.url, data=body, headers=self._headers[content_type], timeout=self.timeouts, allow_redirects=False
            )
        except requests.ConnectTimeout as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except requests.Timeout as exc:  # a read timeout: the request was sent
            raise TransportTimeout(type(exc).__name__, sent=True) from None
        except (requests.RequestException, OSError) as exc:
            # requests does not say whether the body went out: assume it may have.
            sent = not isinstance(exc, requests.exceptions.ConnectionError) or "Connection refused" not in str(exc)
            raise TransportError(type(exc).__name__, sent=sent) from None
        return response.status_code, response.content, response.headers.get("Retry-After")

    def close(self) -> None:
        self._session.close()


def make_transport(
    client: str, url: str, *, concurrency: int, timeout: float, connect_timeout: float | None = None
) -> GeventTransport | RequestsTransport:
    if client == "geventhttpclient":
        return GeventTransport(url, concurrency=concurrency, timeout=timeout, connect_timeout=connect_timeout)
    if client == "requests":
        return RequestsTransport(url, concurrency=concurrency, timeout=timeout, connect_timeout=connect_timeout)
    raise ValueError(f"client must be one of {CLIENTS}, not {client!r}")
