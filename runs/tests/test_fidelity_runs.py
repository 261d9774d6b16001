"""Live runs send what Matomo will keep: goals the site has, no bulk with a secure-only
token for hits that need it, no countries silently dropped."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.template.loader import render_to_string

from backfill.models import BackfillPlan
from runs.forms import StartRunForm
from runs.models import Run, RunLog
from targets.fake_matomo import FakeMatomo
from targets.models import Target
from trafficinator.testing import confirmed_plan, make_fast_preset, make_target


def run_traffic(*args: str) -> str:
    out = io.StringIO()
    call_command("run_traffic", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# A target that passed its connection check (with a token: backfills need one).
READY = {"token_auth": "tok", "last_check_ok": True, "token_can_write": True, "site_timezone": "Europe/Stockholm"}


@pytest.fixture
def countries_preset(db):
    return make_fast_preset("Countries", randomize_countries=True)


@pytest.mark.django_db
def test_run_traffic_refuses_countries_without_a_token_unless_asked(countries_preset):
    make_target(name="tokenless", token_auth="")
    with pytest.raises(CommandError, match=r"tokenless has none.*--without-countries"):
        run_traffic("--target", "tokenless", "--preset", "Countries", "--visits", "1")
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_run_traffic_without_countries_prints_the_consequence(countries_preset):
    with FakeMatomo(sites=[1]) as matomo:
        make_target(name="tokenless", matomo_url=matomo.url, site_id=1, token_auth="")
        output = run_traffic("--target", "tokenless", "--preset", "Countries", "--visits", "5", "--without-countries")
        assert all("cip" not in hit.params for hit in matomo.hits_for(1))
    assert "Without countries for tokenless" in output and "this machine's IP" in output


@pytest.mark.django_db
def test_the_start_form_asks_before_sending_without_countries(countries_preset):
    target = make_target(name="tokenless", token_auth="")
    data = {"targets": [target.pk], "preset": countries_preset.pk}
    form = StartRunForm(data)
    assert not form.is_valid()
    assert "Send without countries" in str(form.errors["without_countries"])
    assert StartRunForm({**data, "without_countries": "on"}).is_valid()


@pytest.mark.django_db(transaction=True)
def test_a_bulk_run_with_a_secure_only_token_sends_single_hits_and_loses_nothing(countries_preset):
    with FakeMatomo(sites=[1], tokens={"careful-token-0001": {"write": [1], "secure_only": True}}) as matomo:
        make_target(name="shop", matomo_url=matomo.url, site_id=1, token_auth="careful-token-0001")
        output = run_traffic("--target", "shop", "--preset", "Countries", "--visits", "30", "--bulk", "--seed", "2")
        stats = matomo.stats()
        recorded_visits = len(matomo.visits(1))
    # The only bulk request is the loader's probe before the first hit (rec=0, records nothing).
    assert stats["bulk_requests"] == 1 and stats["invalid_by_reason"] == {"cip_needs_token": 1}
    assert recorded_visits == 30
    assert "errors=0" in output
    run = Run.objects.get()
    assert run.logs.filter(message__contains="secure only").exists()


@pytest.mark.django_db(transaction=True)
def test_a_run_converts_only_goals_the_site_has_and_says_what_it_left_out(countries_preset):
    # The stream's seed mixes in the target's id, which differs between databases (and on
    # PostgreSQL with the tests run before): 400 visits held ~4-12 conversions of goal 1,
    # and once none. 1,200 visits hold ~18 (none: ~1 in 10**8), at 100 a second.
    countries_preset.visits_per_day = 8_640_000
    countries_preset.save()
    tokens = {"writer-token-0001": {"write": [1]}}
    with FakeMatomo(sites=[{"id": 1, "goals": {1: "Newsletter signup"}}], tokens=tokens) as matomo:
        target = make_target(name="shop", matomo_url=matomo.url, site_id=1, token_auth="writer-token-0001")
        target.site_goals = {"1": "Newsletter signup"}
        target.token_secure_only = False
        target.save()
        run_traffic("--target", "shop", "--preset", "Countries", "--visits", "1200", "--seed", "4")
        stats = matomo.stats()
    assert stats["invalid"] == 0
    goals = {hit.params["idgoal"] for hit in matomo.hits_for(1) if hit.params.get("idgoal", "0") != "0"}
    assert goals == {"1"}
    messages = list(RunLog.objects.values_list("message", flat=True))
    assert any("no goal named Contact form sent" in m for m in messages)
    assert any("conversions left out" in m for m in messages)


@pytest.mark.django_db(transaction=True)
def test_a_bulk_run_that_learns_mid_run_its_token_is_secure_only_ends_every_visit_and_counts_every_hit(
    countries_preset,
):
    """The target's last check said its token works in bulk (the token was replaced since
    by a secure-only one), so the run starts in bulk; the sender learns it from its first
    batches and falls back to single POSTs. Visits admitted before the switch and settled
    after it, and visits admitted after it, all end: none holds its slot forever."""
    with FakeMatomo(sites=[1], tokens={"careful-token-0001": {"write": [1], "secure_only": True}}) as matomo:
        target = make_target(name="shop", matomo_url=matomo.url, site_id=1, token_auth="careful-token-0001")
        target.token_secure_only = False  # a stale check: the run does not probe again
        target.save()
        # Small batches: visits are buffered and in flight when the first answer comes. The
        # duration only bounds a hang (a visit that never ends keeps the run from completing).
        run_traffic(
            "--target", "shop", "--preset", "Countries", "--visits", "60", "--bulk", "--batch-size", "4",
            "--seed", "2", "--duration", "90",
        )  # fmt: skip
        stats = matomo.stats()
        visits = matomo.visits(1)
    run = Run.objects.get()
    assert run.status == Run.Status.COMPLETED and "Visit limit of 60" in run.end_reason
    (target_stats,) = run.stats["targets"].values()
    assert target_stats["mode"] == "single (bulk fallback)" and target_stats["secure_only_token"]
    totals = run.stats["totals"]
    assert totals["visits_started"] == totals["visits_finished"] == 60
    # The batches answered before the switch were refused whole (their cip needs the
    # token, which Matomo ignored in bulk): those hits were resent as single POSTs, like
    # every later hit, so every visit was recorded and nothing was lost.
    assert stats["bulk_requests"] > 0 and stats["single_requests"] > 0 and stats["invalid"] > 0
    assert totals["sent"] == totals["accepted"] == stats["recorded"] == stats["single_requests"]
    assert stats["hits_received"] == totals["sent"] + stats["invalid"]  # the refused hits, once more
    assert totals["invalid"] == totals["errors"] == 0
    assert totals["abandoned"] == totals["unsent"] == totals["in_flight"] == 0
    assert len(visits) == 60  # all visits recorded


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bulk", [False, True])
def test_run_traffic_to_a_site_whose_stored_zone_is_unknown_here_warns_and_sends(bulk):
    """A zone stored by an older check (or newer than this machine's tz data): the run
    follows the preset's zone, and the terminal, the run log and the estimate say so."""
    preset = make_fast_preset("Zoned")
    with FakeMatomo(sites=[1]) as matomo:
        target = make_target(name="shop", matomo_url=matomo.url, site_id=1, token_auth="")
        Target.objects.filter(pk=target.pk).update(site_timezone="Europe/Kyivv")
        output = run_traffic("--target", "shop", "--preset", "Zoned", "--visits", "5", *(["--bulk"] if bulk else []))
        recorded = len(matomo.visits(1))
    assert "Warning: target shop: The site's time zone “Europe/Kyivv” is unknown on this machine" in output
    assert f"days follow {preset.timezone} instead" in output
    run = Run.objects.get()
    assert run.status == Run.Status.COMPLETED and recorded == 5
    assert RunLog.objects.filter(level=RunLog.Level.WARNING, message__contains="Europe/Kyivv").exists()
    estimate = StartRunForm({"targets": [target.pk], "preset": preset.pk}).estimate()
    assert estimate is not None and ["Europe/Kyivv" in warning for warning in estimate.timezone_warnings] == [True]
    html = render_to_string("runs/partials/estimate.html", {"estimate": estimate})
    assert 'data-estimate="timezone">shop: The site&#x27;s time zone “Europe/Kyivv”' in html


@pytest.mark.django_db
def test_the_run_estimate_says_which_returning_share_matomo_will_report_and_why():
    target = make_target(name="shop", **READY)
    none = make_fast_preset("Newcomers", returning_visitor_share=0)
    loyal = make_fast_preset("Loyal", returning_visitor_share=0.35)

    def note(preset):
        estimate = StartRunForm({"targets": [target.pk], "preset": preset.pk}).estimate()
        assert estimate is not None
        return estimate.returning_note

    assert "no returning visits" in note(none)
    fresh = note(loyal)
    assert "about 35% returning visits once the run has been going for a while" in fresh
    assert "only when it knows the visitor from an earlier visit" in fresh
    plan = confirmed_plan([target], loyal, last_days=2)
    BackfillPlan.objects.filter(pk=plan.pk).update(status=BackfillPlan.Status.COMPLETED)
    continued = note(loyal)
    assert "about 35% returning visits from the start" in continued and "latest backfill of shop" in continued


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bulk", [False, True])
def test_logged_in_visitors_without_a_token_are_never_merged_by_fingerprint(bulk):
    """Without a token every visit comes from this machine's IP, so a user id Matomo has
    never seen is looked up by its device fingerprint (the fake does what Matomo 5 does)
    and could adopt a concurrent anonymous visit: none does. The run continues the
    visitors of a backfill whose visits Matomo never got, so members log in from the
    first minute, each a stranger to Matomo: the worst case."""
    members = make_fast_preset("Members", logged_in_share=0.5, returning_visitor_share=0.5)
    with FakeMatomo(sites=[1]) as matomo:
        target = make_target(name="shop", matomo_url=matomo.url, site_id=1, **READY)
        plan = confirmed_plan([target], members, last_days=2, visits_per_day=400)
        BackfillPlan.objects.filter(pk=plan.pk).update(status=BackfillPlan.Status.COMPLETED)  # never sent
        Target.objects.filter(pk=target.pk).update(token_auth="")
        run_traffic(
            "--target", "shop", "--preset", "Members", "--visits", "150", "--seed", "3", *(["--bulk"] if bulk else [])
        )  # fmt: skip
        stats = matomo.stats()
        visits = matomo.visits(1)
        uid_hits = sum(1 for hit in matomo.hits_for(1) if hit.params.get("uid"))
    totals = Run.objects.get().stats["totals"]
    assert uid_hits > 20  # logged-in visitors were sent
    assert stats["uid_matched_by_fingerprint"] == 0
    assert totals["sent"] == totals["accepted"] == stats["recorded"] and stats["invalid"] == 0
    assert len(visits) == totals["visits_started"] == 150
