"""The connection check against local servers: every failure mode has its own message."""

from __future__ import annotations

import io
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from conftest import TOKEN
from targets.checks import check_target, run_check
from targets.fake_matomo import FakeMatomo
from targets.models import Target
from trafficinator.testing import make_target
from trafficinator.traffic import Catalog

TLS_DIR = Path(__file__).parent / "tls"  # a self-signed certificate for 127.0.0.1, for tests only


class _Plain(BaseHTTPRequestHandler):
    """A web server that is not a Matomo."""

    status = 200
    body = b"<html><body>Welcome to nginx!</body></html>"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def plain_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS_DIR / "cert.pem", TLS_DIR / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    listener.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.django_db
def test_a_good_target_with_a_token_learns_the_site_and_records_no_visit(fake_matomo):
    target = make_target(matomo_url=fake_matomo.url + "matomo.php", site_id=1, token_auth=TOKEN)
    result = run_check(target)
    assert result.ok, result.message
    target.refresh_from_db()
    assert (target.site_name, target.site_timezone, target.site_currency) == ("Shop", "Europe/Stockholm", "SEK")
    assert target.matomo_version == "5.3.0" and target.token_can_write and target.last_check_ok
    assert target.token_secure_only is False and target.site_ecommerce is True and target.site_search is True
    assert target.site_goals == {}
    assert "no goals" in result.message
    stats = fake_matomo.stats()
    assert stats["recorded"] == 0 and stats["invalid"] == 0  # the check recorded nothing
    assert stats["excluded_by_reason"] == {"rec_missing": stats["tracked"]}  # only rec=0 probes
    assert stats["token_in_url"] == 0


@pytest.mark.django_db
def test_without_a_token_the_tracker_is_checked_and_the_limits_are_explained(fake_matomo):
    result = check_target(make_target(matomo_url=fake_matomo.url, site_id=1))
    assert result.ok
    assert "No token" in result.message and "countries and backfill" in result.message
    assert fake_matomo.stats()["recorded"] == 0


@pytest.mark.django_db
def test_dns_failure_names_the_host(monkeypatch):
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, *args, **kwargs):
        if host == "matomo.does-not-exist.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    result = check_target(make_target(matomo_url="http://matomo.does-not-exist.test/"))
    assert not result.ok
    assert result.message.startswith("DNS error: the host name matomo.does-not-exist.test could not be resolved")


@pytest.mark.django_db
def test_connection_refused_says_nothing_listens():
    result = check_target(make_target(matomo_url=f"http://127.0.0.1:{_free_port()}/"))
    assert not result.ok
    assert result.message.startswith("Connection refused by 127.0.0.1")


@pytest.mark.django_db
def test_a_server_that_never_answers_times_out(silent_server):
    result = check_target(make_target(matomo_url=silent_server), timeout=0.5)
    assert not result.ok
    assert result.message.startswith("Timeout: 127.0.0.1 did not answer")


@pytest.mark.django_db
def test_an_untrusted_certificate_is_a_tls_error(tls_server):
    result = check_target(make_target(matomo_url=tls_server))
    assert not result.ok
    assert result.message.startswith("TLS error: the certificate of 127.0.0.1 could not be verified")


@pytest.mark.django_db
@pytest.mark.parametrize("status", [200, 404])
def test_a_web_server_that_is_not_matomo_is_recognised(plain_server, status, monkeypatch):
    monkeypatch.setattr(_Plain, "status", status)
    result = check_target(make_target(matomo_url=plain_server))
    assert not result.ok
    assert result.message.startswith(f"Not a Matomo: {plain_server}matomo.php answered HTTP {status}")


@pytest.mark.django_db
def test_an_unknown_site_id_is_reported_as_such(fake_matomo):
    result = check_target(make_target(matomo_url=fake_matomo.url, site_id=9, token_auth=TOKEN))
    assert not result.ok
    assert result.message.startswith("Unknown site id 9")


@pytest.mark.django_db
def test_a_rejected_token_is_reported_without_echoing_it(fake_matomo):
    bad = "not-a-real-token-123456"
    result = check_target(make_target(matomo_url=fake_matomo.url, site_id=1, token_auth=bad))
    assert not result.ok
    assert result.message.startswith("Token rejected by Matomo")
    assert bad not in result.message


@pytest.mark.django_db
def test_a_token_without_access_to_the_site_is_explained():
    server = FakeMatomo(sites=[1, 2], tokens={"other-site": {"admin": [2]}, "viewer": {"view": [1]}}).start()
    try:
        no_access = check_target(make_target(matomo_url=server.url, site_id=1, token_auth="other-site"))
        view_only = check_target(make_target(matomo_url=server.url, site_id=1, token_auth="viewer"))
    finally:
        server.stop()
    assert not no_access.ok and no_access.message.startswith("The token has no access to site id 1")
    assert not view_only.ok and view_only.message.startswith("The token can only view site 1")
    assert view_only.token_can_write is False


@pytest.mark.django_db
def test_target_check_command_prints_the_steps_and_fails_with_exit_code(fake_matomo):
    make_target(name="shop", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    make_target(name="wrong", matomo_url=fake_matomo.url, site_id=5, token_auth=TOKEN)
    out = io.StringIO()
    call_command("target", "check", "shop", stdout=out)
    assert "✓ Token accepted by Matomo 5.3.0." in out.getvalue()
    assert "in single hits and in bulk requests: countries and backfill are possible" in out.getvalue()
    with pytest.raises(CommandError, match="1 of 2 check"):
        call_command("target", "check", "--all", stdout=io.StringIO())


@pytest.mark.django_db
def test_without_a_token_a_wrong_site_id_fails_the_check(fake_matomo):
    result = check_target(make_target(matomo_url=fake_matomo.url, site_id=7))
    assert not result.ok
    assert result.message.startswith("Unknown site id 7: the tracker answered 400")
    assert fake_matomo.stats()["recorded"] == 0


@pytest.mark.django_db
def test_a_secure_only_token_is_detected_and_what_works_is_explained():
    server = FakeMatomo(sites=[1], tokens={"careful": {"write": [1], "secure_only": True}}).start()
    try:
        target = make_target(matomo_url=server.url, site_id=1, token_auth="careful")
        result = run_check(target)
        stats = server.stats()
    finally:
        server.stop()
    assert result.ok, result.message
    target.refresh_from_db()
    assert target.token_secure_only is True
    assert any("secure only" in step and "single hits" in step for step in result.steps)
    assert "secure-only token" in result.message
    assert stats["recorded"] == 0
    # No step promises what the token cannot do (backfill needs it in bulk).
    assert not any("backfill are possible" in step for step in result.steps), result.steps


@pytest.mark.django_db
def test_the_check_reads_the_sites_goals_and_ecommerce_switch():
    server = FakeMatomo(
        sites=[{"id": 1, "goals": {1: "Newsletter signup", 4: "Store fitting booked"}}], tokens={"t": {"admin": [1]}}
    ).start()
    try:
        target = make_target(matomo_url=server.url, site_id=1, token_auth="t")
        result = run_check(target)
    finally:
        server.stop()
    target.refresh_from_db()
    assert target.site_goals == {"1": "Newsletter signup", "4": "Store fitting booked"}
    assert target.site_ecommerce is False
    assert "ecommerce off" in result.message
    assert "Contact form sent" in target.goals_notice(Catalog.load_default())


@pytest.mark.django_db
def test_target_add_with_check_exits_non_zero_when_the_check_fails(fake_matomo):
    with pytest.raises(CommandError, match="check failed"):
        call_command(
            "target",
            "add",
            "--name",
            "typo",
            "--url",
            fake_matomo.url,
            "--site-id",
            "8",
            "--check",
            stdout=io.StringIO(),
        )
    assert Target.objects.get(name="typo").last_check_ok is False


@pytest.mark.django_db
def test_target_prepare_creates_the_catalogs_goals_and_turns_on_ecommerce_and_site_search():
    site = {"id": 1, "goals": {1: "newsletter signup"}, "sitesearch": False}
    server = FakeMatomo(sites=[site], tokens={"t": {"admin": [1]}}).start()
    try:
        target = make_target(name="shop", matomo_url=server.url, site_id=1, token_auth="t")
        out = io.StringIO()
        call_command("target", "prepare", "shop", stdout=out)
        call_command("target", "prepare", "shop", stdout=(again := io.StringIO()))
    finally:
        server.stop()
    target.refresh_from_db()
    assert target.site_goals == {
        "1": "newsletter signup",
        "2": "Contact form sent",
        "3": "Account created",
        "4": "Store fitting booked",
    }
    assert target.site_ecommerce is True and target.site_search is True
    assert "✓ created: goal “Contact form sent” (id 2)" in out.getvalue()
    assert "Nothing to do" in again.getvalue()
    assert target.goals_notice(Catalog.load_default()) == ""


@pytest.mark.django_db
def test_target_prepare_needs_write_access_and_says_what_failed():
    server = FakeMatomo(sites=[1], tokens={"viewer-token-0001": {"view": [1]}}).start()
    try:
        make_target(name="shop", matomo_url=server.url, site_id=1, token_auth="viewer-token-0001")
        with pytest.raises(CommandError, match="can only view site 1"):
            call_command("target", "prepare", "shop", stdout=io.StringIO())
    finally:
        server.stop()
