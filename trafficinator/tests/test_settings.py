import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from trafficinator.settings import database_from_url, env_bool, env_int, env_list

BASE_DIR = Path(__file__).resolve().parents[2]


def test_env_bool_accepts_the_usual_spellings(monkeypatch):
    for raw, expected in [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False), ("", False)]:
        monkeypatch.setenv("X_FLAG", raw)
        assert env_bool("X_FLAG", not expected) is expected


def test_env_bool_rejects_anything_else_loudly(monkeypatch):
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG='maybe' is not a boolean"):
        env_bool("X_FLAG", False)


def test_env_bool_uses_the_default_when_unset(monkeypatch):
    monkeypatch.delenv("X_FLAG", raising=False)
    assert env_bool("X_FLAG", True) is True


def test_env_int_rejects_words_and_values_below_minimum(monkeypatch):
    monkeypatch.setenv("X_NUM", "ten")
    with pytest.raises(ImproperlyConfigured, match="not a whole number"):
        env_int("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "-3")
    with pytest.raises(ImproperlyConfigured, match="below the minimum of 0"):
        env_int("X_NUM", 1, minimum=0)
    monkeypatch.setenv("X_NUM", "42")
    assert env_int("X_NUM", 1) == 42


def test_env_list_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv("X_LIST", " a.example , b.example,, ")
    assert env_list("X_LIST", []) == ["a.example", "b.example"]


def test_database_url_for_postgres_is_parsed_completely():
    db = database_from_url("postgres://user:p%40ss@db.internal:6543/traffic?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], str(db["PORT"])) == (
        "traffic",
        "user",
        "p@ss",
        "db.internal",
        "6543",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}
    assert db["CONN_MAX_AGE"] == 60 and db["CONN_HEALTH_CHECKS"] is True


def test_database_url_for_a_postgres_unix_socket_is_understood():
    """The percent-encoded socket directory form that the hand-written parser got wrong."""
    db = database_from_url("postgres://traffic@%2Fvar%2Frun%2Fpostgresql/traffic")
    assert (db["HOST"], db["NAME"], db["USER"]) == ("/var/run/postgresql", "traffic", "traffic")


def test_database_url_for_sqlite_keeps_wal_and_immediate_transactions():
    db = database_from_url("sqlite:////tmp/traffic.db")
    assert str(db["NAME"]) == "/tmp/traffic.db"
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/x", "not supported"),
        ("postgres://user@host:5432/", "no database name"),
        ("sqlite://", "needs a file path"),
        ("sqlite://:memory:", "needs a file path"),
        ("traffic.example.com/db", "could not be read"),
    ],
)
def test_database_url_mistakes_are_explained(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        database_from_url(url)


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE"}}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_production_switches_pass_check_deploy(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DEBUG": "0",
            "SECRET_KEY": "x7!" * 20 + "production-secret-for-the-check-only",
            "ALLOWED_HOSTS": "traffic.example.com",
            "SECURE_HSTS_PRELOAD": "1",  # opt-in (a commitment to the browsers' list); the only W-level check
            "TRAFFICINATOR_DATA_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_without_secret_key_refuses_to_start(tmp_path):
    result = _manage("check", env={"DEBUG": "0", "SECRET_KEY": "", "TRAFFICINATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_a_bad_setting_value_stops_start_up_with_its_name(tmp_path):
    result = _manage("check", env={"DEBUG": "perhaps", "TRAFFICINATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DEBUG='perhaps' is not a boolean" in result.stderr


def test_local_secret_key_is_generated_once_and_kept(tmp_path):
    env = {"TRAFFICINATOR_DATA_DIR": str(tmp_path), "SECRET_KEY": "", "DEBUG": "1"}
    assert _manage("check", env=env).returncode == 0
    first = (tmp_path / "secret_key").read_text()
    assert _manage("check", env=env).returncode == 0
    assert (tmp_path / "secret_key").read_text() == first
    assert len(first) >= 50
