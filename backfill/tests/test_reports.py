"""Backfill plan reports: JSON and CSV per day, parsed back and checked against the days."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.management import call_command

from backfill.models import BackfillPlan
from trafficinator.testing import BACKFILL_VIEWER, make_user


def command(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_plans_json_and_csv_reports_give_each_days_planned_sent_accepted_and_invalid(
    fake_matomo, shop, small_preset, client
):
    command("backfill", "--target", "shop", "--preset", "Small", "--last-days", "2", "--yes")
    plan = BackfillPlan.objects.get()
    days = {day.day.isoformat(): day for day in plan.days.all()}

    report = json.loads(command("run_report", "--plan", str(plan.pk)))
    assert report["plan"]["id"] == plan.pk and report["plan"]["status"] == "completed"
    assert [row["day"] for row in report["days"]] == sorted(days)
    for row in report["days"]:
        day = days[row["day"]]
        assert (row["planned_visits"], row["hits_sent"], row["hits_accepted"], row["hits_invalid"]) == (
            day.planned_visits,
            day.hits_sent,
            day.hits_accepted,
            day.hits_invalid,
        )
    assert report["totals"]["hits_accepted"] == fake_matomo.stats()["recorded"]
    assert shop.token_auth not in json.dumps(report)

    rows = list(csv.DictReader(io.StringIO(command("run_report", "--plan", str(plan.pk), "--format", "csv"))))
    assert [(row["day"], int(row["hits_sent"])) for row in rows] == [
        (row["day"], row["hits_sent"]) for row in report["days"]
    ]

    client.force_login(make_user(perms=BACKFILL_VIEWER))
    assert f"/backfill/{plan.pk}/report.csv" in client.get(f"/backfill/{plan.pk}/").content.decode()
    response = client.get(f"/backfill/{plan.pk}/report.json")
    assert response["Content-Disposition"] == f'attachment; filename="backfill-{plan.pk}.json"'
    assert response.json()["totals"] == report["totals"]


@pytest.mark.django_db(transaction=True)
def test_the_last_comparison_with_matomos_day_reports_is_in_the_plans_reports(fake_matomo, shop, small_preset):
    command("backfill", "--target", "shop", "--preset", "Small", "--last-days", "2", "--yes")
    plan = BackfillPlan.objects.get()
    report = json.loads(command("run_report", "--plan", str(plan.pk)))
    assert report["matomo"] is None and all(row["matomo_visits"] is None for row in report["days"])

    command("verify", f"backfill:{plan.pk}")
    report = json.loads(command("run_report", "--plan", str(plan.pk)))
    assert report["matomo"]["source"] == "VisitsSummary.get"
    assert report["matomo"]["read_at"] == BackfillPlan.objects.get().verification["at"]
    sent = [row for row in report["days"] if row["visits_done"]]
    assert sent and all(row["matomo_visits"] == row["visits_done"] for row in sent)
    assert all(row["matomo_note"] == "as sent" for row in sent)

    rows = list(csv.DictReader(io.StringIO(command("run_report", "--plan", str(plan.pk), "--format", "csv"))))
    assert [(row["day"], row["matomo_visits"], row["matomo_note"]) for row in rows if row["visits_done"] != "0"] == [
        (row["day"], str(row["matomo_visits"]), "as sent") for row in sent
    ]
