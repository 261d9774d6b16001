"""The production path end to end: `scripts/serve` (migrate, collectstatic, gunicorn) with
DEBUG off and the production switches on (https redirect, secure cookies, HSTS), the two
django-q2 clusters, and a run started in a real browser that reaches a fake Matomo.

gunicorn serves https itself here (a self-signed certificate for 127.0.0.1), so nothing
of the documented production settings has to be turned off for the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.conf import settings

from runs.models import Run
from trafficinator.testing import (
    TEST_PASSWORD,
    make_browser_paced_preset,
    make_target,
    make_user,
    subprocess_env,
    wait_until,
)

BASE_DIR = Path(settings.BASE_DIR)
ARTIFACTS = BASE_DIR / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate for gunicorn's https")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [*request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # Whatever of its session is left: a qcluster killed alone leaves its sentinel and
    # workers running on the test database, taking the next tests' tasks.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class Production:
    """scripts/serve and the two clusters, all on the test database, logging to files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        cert, key = self_signed_certificate(folder)
        self.env = subprocess_env(
            DEBUG="0",
            SECRET_KEY="production-test-" + "k3y!" * 12,
            ALLOWED_HOSTS="127.0.0.1",
            STATIC_ROOT=str(folder / "static"),
            TRAFFICINATOR_DATA_DIR=str(folder / "data"),
            TRAFFICINATOR_PYTHON=sys.executable,
            SERVE_BIND=f"127.0.0.1:{self.port}",
            SERVE_CERTFILE=str(cert),
            SERVE_KEYFILE=str(key),
            WEB_CONCURRENCY="2",
            Q_WORKERS="1",
            LOADER_WORKERS="2",
            LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("Q_CLUSTER_NAME", None)
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str], **extra_env: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        process = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() can end all of it
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop(process)
        ARTIFACTS.mkdir(exist_ok=True)
        for name in self.processes:
            shutil.copy(self.folder / f"{name}.log", ARTIFACTS / f"serve-{name}.log")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, verify=False, timeout=10, allow_redirects=False, **kwargs)  # noqa: S501


@pytest.fixture
def production(tmp_path):
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # our own certificate
    production = Production(tmp_path)
    manage = [sys.executable, str(BASE_DIR / "manage.py"), "qcluster"]
    production.start("default-cluster", manage)
    production.start("loader-cluster", manage, Q_CLUSTER_NAME="loaders")
    production.start("web", [str(BASE_DIR / "scripts" / "serve")])
    try:

        def web_is_up():
            assert production.processes["web"].poll() is None, production.log("web")
            try:
                return production.get("/health/web/").status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # starting, or slow on a busy machine
                return False

        # collectstatic compresses ~800 files first: slow on a busy machine.
        wait_until(web_is_up, 240, what="scripts/serve to answer", interval=0.5)
        yield production
    finally:
        production.stop_all()


def assert_cached_forever(response: requests.Response) -> None:
    assert response.status_code == 200, response.url
    assert "immutable" in response.headers["Cache-Control"], response.headers
    assert "max-age=315360000" in response.headers["Cache-Control"]


def test_serve_runs_the_app_in_production_settings_with_static_files_health_and_a_run_to_matomo(
    production, monkeypatch, settings
):
    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM, CHROMIUM_ARGS
    from targets.fake_matomo import FakeMatomo

    # Pages: the app's and the admin's login pages carry HSTS and the CSP, and link hashed
    # static files. (gunicorn speaks only https here, so no plain-http request reaches
    # Django; its https redirect is test_health's production-settings test.)
    login = production.get("/login/")
    assert login.status_code == 200 and 'id="login-form"' in login.text
    assert login.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "default-src 'self'" in login.headers["Content-Security-Policy"]
    assert production.get("/admin/login/").status_code == 200
    css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login.text)
    assert css, "the login page links hashed static files (manifest storage)"
    assert_cached_forever(production.get(css.group(1), headers={"Accept-Encoding": "gzip"}))
    assert production.get(css.group(1), headers={"Accept-Encoding": "gzip"}).headers["Content-Encoding"] == "gzip"
    # htmx (the live refresh) and our own CSS, fetched as a browser would: checked here, so
    # a machine without Chromium still checks them.
    for pattern in (
        r'src="(/static/[^"]*htmx[^"/]*\.[0-9a-f]{12}\.js)"',
        r'href="(/static/css/trafficinator\.[0-9a-f]{12}\.css)"',
    ):
        asset = re.search(pattern, login.text)
        assert asset, f"the login page links {pattern}"
        response = production.get(asset.group(1))
        assert_cached_forever(response)
        assert response.content  # not an empty file

    # Health: the database, the ORM broker and exactly the clusters this test started.
    clusters = {
        production.processes["default-cluster"].pid: "trafficinator",
        production.processes["loader-cluster"].pid: "loaders",
    }

    def healthy():
        response = production.get("/health/")
        body = response.json()
        # A starting cluster saves its first heartbeat before it spawns its workers.
        seen = {c["pid"]: c["queue"] for c in body.get("clusters", []) if c["workers"]}
        return body if response.status_code == 200 and seen == clusters else None

    health = wait_until(healthy, 90, what="/health/ to report both clusters", interval=0.5)
    assert health["database"]["ok"] and health["broker"]["ok"]
    assert health["loader_slots"] == {"total": 2, "busy": 0, "free": 2}
    assert health["queues"]["loaders"]["workers"] == 2 and health["queues"]["trafficinator"]["workers"] == 1

    # A run started from the dashboard in Chromium reaches the fake Matomo, and htmx
    # (served by whitenoise) refreshes the run page without a reload.
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (scripts/test installs it)")
    # Playwright's sync API runs an event loop in this thread; our ORM calls stay synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with FakeMatomo(sites=[1]) as matomo, sync_playwright() as playwright:
        make_target(name="fake-matomo", matomo_url=matomo.url, site_id=1)
        make_browser_paced_preset("Quick visits")
        # The server checks the password with Django's default hashers, not the tests' fast one.
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
        user = make_user("operator", superuser=True)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.set_default_timeout(30_000)
            static = {}
            page.on("response", lambda r: static.update({r.url: r}) if "/static/" in r.url else None)
            page.goto(f"{production.url}/admin/login/?next=/")
            page.fill("#id_username", user.username)
            page.fill("#id_password", TEST_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{production.url}/")
            htmx = [r for url, r in static.items() if re.search(r"/htmx[^/]*\.[0-9a-f]{12}\.js$", url)]
            assert htmx, list(static)
            assert htmx[0].status == 200 and "immutable" in htmx[0].headers["cache-control"]
            ours = [r for url, r in static.items() if re.search(r"/css/trafficinator\.[0-9a-f]{12}\.css$", url)]
            assert ours and ours[0].status == 200

            form = page.locator("#start-run")
            form.get_by_label("fake-matomo (no token)").check()
            form.get_by_label("Preset").select_option(label="Quick visits")
            form.get_by_label("Visits per day").fill("400000")
            form.get_by_role("button", name="Start run").click()
            page.wait_for_url(re.compile(r".*/runs/\d+/$"))
            run_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
            page.evaluate("window.notReloaded = true")
            page.wait_for_selector('#run-summary [data-status="running"]', timeout=90_000)
            hits = "Number(document.querySelector('#run-summary [data-figure=hits]').textContent.replace(/,/g, ''))"
            page.wait_for_function(f"() => {hits} > 0", timeout=60_000)
            assert page.evaluate("window.notReloaded") is True  # htmx swapped the panel in place
            wait_until(lambda: matomo.stats()["tracked"] > 0, 30, what="hits at the fake Matomo", interval=0.5)

            # The running loader holds one of the two loader slots.
            busy = wait_until(
                lambda: (body := production.get("/health/").json())["loader_slots"]["busy"] == 1 and body,
                30,
                what="a busy loader slot",
                interval=0.5,
            )
            assert busy["loader_slots"] == {"total": 2, "busy": 1, "free": 1}
        finally:
            browser.close()
        Run.objects.get(pk=run_id).request_stop("Stopped by the test.")
        wait_until(
            lambda: Run.objects.get(pk=run_id).status == Run.Status.STOPPED, 60, what="the run to stop", interval=0.5
        )
        run = Run.objects.get(pk=run_id)
        assert run.totals["accepted"] > 0
        assert matomo.stats()["tracked"] >= run.totals["accepted"]

    # gunicorn's access log and Django's logs: one JSON object per line (LOG_FORMAT=json).
    production.processes["web"].send_signal(signal.SIGTERM)
    production.processes["web"].wait(timeout=30)
    events = [json.loads(line) for line in production.log("web").splitlines() if line.startswith("{")]
    access = [e for e in events if e["logger"] == "gunicorn.access"]
    assert any("GET /health/" in e["message"] for e in access)
    assert any(e["logger"] == "gunicorn.error" and "Starting gunicorn" in e["message"] for e in events)
