import pytest
from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from trafficinator.testing import make_preset, make_target, make_user

# URLs that must answer without a login, and why.
PUBLIC = {
    "/health/",  # monitoring
    "/health/web/",  # load balancers and container probes
    "/admin/login/",  # the way in
    "/admin/logout/",  # POST-only, harmless
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
    assert "cdn" not in html.lower()


@pytest.mark.django_db
def test_responses_carry_a_content_security_policy(client):
    response = client.get("/admin/login/")
    assert "default-src 'self'" in response["Content-Security-Policy"]
