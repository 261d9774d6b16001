import re

import pytest
from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from trafficinator.testing import RUN_VIEWER, TEST_PASSWORD, make_preset, make_target, make_user

# URLs that must answer without a login, and why.
PUBLIC = {
    "/health/",  # monitoring
    "/health/web/",  # load balancers and container probes
    "/admin/login/",  # the way in
    "/admin/logout/",  # POST-only, harmless
    "/login/",  # the application's way in, for users who are not staff
    "/logout/",  # POST-only, harmless
    "/favicon.ico",  # a redirect to the icon
}
# URLs for machines: no login page, but a 401 unless they get an API token (README "API").
TOKEN_ONLY = ("/api/", "/metrics")


def _all_urls(resolver=None, prefix="/"):
    """Every URL the project serves, with 1 for each path parameter."""
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        route = str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _all_urls(pattern, prefix + route)
        elif isinstance(pattern, URLPattern):
            url = prefix + route
            for marker in ("<int:object_id>", "<path:object_id>", "<int:pk>", "<str:app_label>", "<id>"):
                url = url.replace(marker, "1")
            if "<" in url or "(" in url or url.endswith("$") or "^" in url:
                continue  # regex catch-alls (admin app index, jsi18n variants) are covered by others
            yield url


@pytest.mark.django_db
def test_every_url_requires_a_login(client):
    checked = 0
    for url in _all_urls():
        if url in PUBLIC:
            continue
        response = client.get(url)
        if url.startswith(TOKEN_ONLY):
            assert response.status_code == 401, f"{url} answered {response.status_code} without a token"
            checked += 1
            continue
        assert response.status_code in (302, 301), f"{url} answered {response.status_code} without a login"
        assert "/login/" in response.headers["Location"], url
        checked += 1
    assert checked > 20  # the walk found the admin's and our URLs


@pytest.mark.django_db
def test_health_answers_without_login(client):
    response = client.get("/health/web/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": {"ok": True, "vendor": connection.vendor}}


@pytest.mark.django_db
def test_home_shows_targets_and_presets_in_the_admin_layout(client):
    make_target(name="shop-prod")
    make_preset(name="My profile")
    client.force_login(make_user(superuser=True))
    response = client.get(reverse("home"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "shop-prod" in html and "My profile" in html and "Medium" in html
    assert 'id="site-name"' in html  # the admin's header
    assert "django_htmx/htmx-2.min.js" in html or "htmx-2.min.js" in html  # htmx from the package, no CDN
    # No third-party host (not a bare "cdn": a random CSRF token can contain those letters).
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


@pytest.mark.django_db
def test_responses_carry_a_content_security_policy(client):
    response = client.get("/admin/login/")
    assert "default-src 'self'" in response["Content-Security-Policy"]


@pytest.mark.django_db
def test_a_user_with_a_permission_but_no_staff_flag_logs_in_on_the_apps_login_page(client):
    make_user("viewer", staff=False, perms=RUN_VIEWER)
    response = client.get(reverse("home"))
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    response = client.post("/login/?next=/", {"username": "viewer", "password": TEST_PASSWORD, "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    html = client.get("/").content.decode()
    assert "Welcome, <strong>viewer</strong>" in html and 'action="/logout/"' in html
    # The navigation shows what this user may open: no Configuration, no Funnels (admin pages).
    assert ">Dashboard</a>" in html and ">Configuration</a>" not in html and ">Funnels</a>" not in html


@pytest.mark.django_db
def test_a_user_without_any_permission_is_told_why_they_cannot_log_in(client):
    make_user("nobody", staff=False)
    html = client.post("/login/", {"username": "nobody", "password": TEST_PASSWORD}).content.decode()
    assert "has no permission in Trafficinator yet" in html
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_admin_pages_have_the_apps_brand_and_navigation_and_no_view_site_link(client):
    client.force_login(make_user(superuser=True))
    html = client.get(reverse("admin:runs_run_changelist")).content.decode()
    assert '<div id="site-name"><a href="/">Trafficinator</a></div>' in html
    for link in (">Dashboard</a>", ">Backfills</a>", ">Funnels</a>", ">Configuration</a>"):
        assert link in html, link
    assert "View site" not in html
    assert 'rel="icon" href="/static/favicon.svg"' in html


@pytest.mark.django_db
def test_the_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")
