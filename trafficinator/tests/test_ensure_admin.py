"""manage.py ensure_admin: the admin account of the one-command local setup."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from trafficinator.testing import make_user

pytestmark = pytest.mark.django_db


def ensure_admin(*args: str) -> str:
    out = io.StringIO()
    call_command("ensure_admin", *args, stdout=out)
    return out.getvalue()


def test_a_generated_password_is_printed_once_and_logs_the_admin_in(monkeypatch):
    monkeypatch.delenv("TRAFFICINATOR_ADMIN_PASSWORD", raising=False)
    output = ensure_admin()
    password = re.search(r"with the password:\s+(\S+)", output).group(1)
    user = authenticate(username="admin", password=password)
    assert user is not None and user.is_superuser and user.is_staff
    assert "nothing to do" in ensure_admin()  # the second start prints no password
    assert password not in ensure_admin()


def test_the_password_comes_from_the_environment_and_is_not_printed(monkeypatch):
    monkeypatch.setenv("TRAFFICINATOR_ADMIN_PASSWORD", "from-the-env-1234")
    output = ensure_admin("--username", "boss", "--email", "boss@example.com")
    assert "from-the-env-1234" not in output and "TRAFFICINATOR_ADMIN_PASSWORD" in output
    user = authenticate(username="boss", password="from-the-env-1234")
    assert user is not None and user.is_superuser and user.email == "boss@example.com"


def test_an_existing_super_user_is_left_alone(monkeypatch):
    monkeypatch.setenv("TRAFFICINATOR_ADMIN_PASSWORD", "ignored-password")
    make_user("root", superuser=True)
    assert "nothing to do" in ensure_admin()
    assert list(get_user_model().objects.values_list("username", flat=True)) == ["root"]
