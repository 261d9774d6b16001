import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from runs.management.commands.sample_visits import split_count
from trafficinator.traffic import validate_hit


def sample(*args: str) -> list[dict]:
    out = io.StringIO()
    call_command("sample_visits", *args, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.django_db
def test_sample_visits_prints_one_valid_json_line_per_hit():
    rows = sample("--preset", "Medium", "--count", "20", "--seed", "4")
    assert {row["visit"] for row in rows} == set(range(1, 21))
    now = datetime.now(UTC)
    for row in rows:
        assert set(row) == {"visit", "visitor", "ts", "params"}
        assert row["params"]["cid"] == row["visitor"]
        ts = datetime.fromisoformat(row["ts"])
        assert now - timedelta(hours=24) <= ts <= now
        params = dict(row["params"])
        assert validate_hit(params, token_present=False) == [], row
        assert "cip" not in params and "token_auth" not in params


@pytest.mark.django_db
def test_sample_visits_is_deterministic_for_a_seed_and_window():
    args = ("--preset", "Light", "--count", "15", "--seed", "11", "--start", "2026-03-02", "--days", "3")
    first, second = sample(*args), sample(*args)
    assert first == second
    assert first != sample("--preset", "Light", "--count", "15", "--seed", "12", "--start", "2026-03-02", "--days", "3")


@pytest.mark.django_db
def test_sample_visits_spreads_a_window_over_its_days_and_masks_the_token():
    rows = sample("--preset", "Heavy", "--count", "30", "--start", "2026-03-02", "--days", "3", "--token")
    days = {row["ts"][:10] for row in rows}
    assert days <= {"2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"}  # CET days in UTC
    assert len({row["visit"] for row in rows}) == 30
    assert all(row["params"]["token_auth"] == "***" for row in rows)
    assert any("cip" in row["params"] for row in rows)  # Heavy randomises countries, a token allows it


def test_split_count_is_exact_and_proportional():
    assert split_count(10, [1, 1, 2]) == [3, 2, 5]
    assert sum(split_count(7, [5, 3, 9])) == 7
    assert split_count(4, [0, 0]) == [2, 2]


@pytest.mark.django_db
def test_sample_visits_explains_bad_arguments():
    with pytest.raises(CommandError, match="No preset named “Nope”"):
        sample("--preset", "Nope")
    with pytest.raises(CommandError, match="--count must be 1 or more"):
        sample("--preset", "Light", "--count", "0")
