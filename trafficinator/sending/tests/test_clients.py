"""The transport's answer reader on answers cut at every byte, framed every way."""

from __future__ import annotations

import time

import pytest
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

from trafficinator.sending.clients import read_answer


class Pieces:
    """A socket whose recv hands out ``data`` in pieces of ``size`` bytes, then b""."""

    def __init__(self, data: bytes, size: int) -> None:
        self.pieces = [data[i : i + size] for i in range(0, len(data), size)]

    def recv(self, _bufsize: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def read_in_pieces(data: bytes):
    """read_answer's result, the same whatever the pieces the answer arrives in."""
    results = {read_answer(Pieces(data, size)) for size in (1, 2, 3, 7, 64, len(data))}  # type: ignore[arg-type]
    assert len(results) == 1, results
    return results.pop()


def test_a_content_length_answer_is_read_whole_and_the_connection_is_reusable():
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: 5\r\n\r\nGIF89"
    assert read_in_pieces(answer) == (200, b"GIF89", None, True)


def test_a_chunked_answer_with_extensions_and_trailers_is_decoded():
    answer = (
        b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n3\r\n:1}\r\n0\r\nX-Trailer: yes\r\n\r\n'
    )
    assert read_in_pieces(answer) == (400, b'{"a":1}', "7", True)


def test_interim_answers_are_skipped():
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    assert read_in_pieces(answer) == (204, b"", None, True)


def test_connection_close_http_1_0_and_answers_without_a_length_are_not_reused():
    close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
    assert read_in_pieces(close) == (503, b"no", None, False)
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert read_in_pieces(old) == (200, b"ok", None, False)
    old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok"
    assert read_in_pieces(old_kept) == (200, b"ok", None, True)
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    assert read_in_pieces(until_close) == (200, b"all of it", None, False)


def test_bytes_after_the_answer_make_the_connection_unusable():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"
    assert read_answer(Pieces(answer, len(answer))) == (200, b"ok", None, False)


def test_retry_after_given_twice_is_ignored():
    answer = b"HTTP/1.1 429 Too Many\r\nRetry-After: 1\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n"
    assert read_in_pieces(answer) == (429, b"", None, True)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Le",  # cut in the head
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",  # cut in a chunk
        b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n",  # not HTTP
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
    ],
)
@pytest.mark.parametrize("size", [3, 1000])  # in pieces, or whole in the first read
def test_malformed_or_truncated_answers_are_parse_errors(answer, size):
    with pytest.raises(HTTPParseError):
        read_answer(Pieces(answer, size))


def test_a_connection_closed_before_any_answer_says_so():
    with pytest.raises(HTTPConnectionClosed):
        read_answer(Pieces(b"", 1))


def test_a_server_trickling_its_answer_times_out_and_the_watchdog_rests_when_idle():
    import gevent
    from gevent.server import StreamServer

    from trafficinator.sending.clients import FORM, GeventTransport, TransportTimeout
    from trafficinator.testing import wait_until

    def trickle(conn, _address):
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" * 100:
            conn.sendall(bytes([byte]))
            gevent.sleep(0.05)

    server = StreamServer(("127.0.0.1", 0), trickle)
    server.start()
    transport = GeventTransport(f"http://127.0.0.1:{server.server_port}/matomo.php", concurrency=1, timeout=0.3)
    try:
        with pytest.raises(TransportTimeout) as raised:
            transport.post(b"idsite=1&rec=1", FORM)
        assert raised.value.sent  # the request went out: Matomo may have it
        wait_until(
            lambda: not transport._watchdog._timer.active, what="the watchdog timer stops when idle", sleep=gevent.sleep
        )
    finally:
        transport.close()
        server.stop()
    # Closed: a request (refused now) still has a deadline, a timeout of its own.
    token = transport._watchdog.watch()
    assert isinstance(token, gevent.Timeout)
    transport._watchdog.unwatch(token)


def test_the_watchdog_wakes_only_when_a_deadline_is_due():
    """One timer, due at the earliest deadline in flight: requests that finish in time
    never wake it, and a request that started later is timed out at its own deadline."""
    import gevent
    from gevent.server import StreamServer

    from trafficinator.sending.clients import FORM, GeventTransport, TransportTimeout

    delays = iter([0.02] * 8 + [5.0])

    def answer(conn, _address):
        while conn.recv(65536):
            gevent.sleep(next(delays))
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = StreamServer(("127.0.0.1", 0), answer)
    server.start()
    transport = GeventTransport(f"http://127.0.0.1:{server.server_port}/matomo.php", concurrency=1, timeout=0.5)
    checks = []
    check = transport._watchdog._check
    transport._watchdog._check = lambda: (checks.append(time.monotonic()), check())
    try:
        for _ in range(8):  # ~0.2 s of requests answered in time: the periodic check woke ~4 times
            assert transport.post(b"idsite=1&rec=1", FORM)[0] == 204
        assert checks == []
        started = time.monotonic()
        with pytest.raises(TransportTimeout):
            transport.post(b"idsite=1&rec=1", FORM)
        # Due at its own deadline, not at the first request's (0.3 s earlier).
        assert 0.45 <= time.monotonic() - started < 2.0
        assert 1 <= len(checks) <= 3  # the first request's deadline, maybe a re-arm, this one's
    finally:
        transport.close()
        server.stop()
