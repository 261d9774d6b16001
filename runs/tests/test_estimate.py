"""The start form's estimate comes from the traffic model that generates the run's traffic:
its hits per visit match what the loader's own visit streams contain, within 5 %."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice

import pytest

from presets.models import Preset
from runs.forms import RunEstimate, StartRunForm
from runs.loader import target_streams
from runs.models import Run
from trafficinator.testing import make_funnel, make_step, make_target

GENERATED_VISITS = 6000
# A run's streams are seeded by its target's id and shaped by when they start (the day's
# curve, which members are known), and two samples of a few thousand visits differ by a
# few percent: a fixed start and a fixed target id make the comparison pass or fail by
# the code, not by the clock or by how many targets the database made before (on
# PostgreSQL ids come from a sequence that other tests move on).
STREAM_START = datetime(2026, 3, 4, 15, 30, tzinfo=UTC).timestamp()
TARGET_ID = 987_654


def generated_hits_per_visit(run: Run) -> float:
    """Hits per visit in the visits a live loader would send for ``run`` (its own seed)."""
    run_targets = list(run.run_targets.select_related("target"))
    stream = target_streams(run, run_targets, start=STREAM_START)[0]
    visits = list(islice(stream.visits, GENERATED_VISITS))
    return sum(len(visit.hits) for visit in visits) / len(visits)


def estimate_for(preset: Preset, target) -> RunEstimate:
    form = StartRunForm({"preset": preset.pk, "targets": [target.pk]})
    assert form.is_valid(), form.errors
    estimate = form.estimate()
    assert estimate is not None
    return estimate


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["Light", "Medium", "Heavy", "Extreme"])
def test_the_estimate_matches_the_traffic_a_run_generates_within_5_percent(name):
    preset = Preset.objects.get(name=name)
    target = make_target(pk=TARGET_ID, token_auth="estimate-token-0123456789")
    estimate = estimate_for(preset, target)
    run = Run.objects.create_run(preset=preset, targets=[target], seed=12345)
    generated = generated_hits_per_visit(run)
    assert estimate.hits_per_visit == pytest.approx(generated, rel=0.05)
    assert estimate.hits_per_second == pytest.approx(preset.visits_per_day / 86_400 * generated, rel=0.05)


@pytest.mark.django_db
def test_the_estimate_counts_the_hits_of_the_presets_funnels():
    preset = Preset.objects.get(name="Light")
    target = make_target(pk=TARGET_ID, token_auth="estimate-token-0123456789")
    without = estimate_for(preset, target).hits_per_visit
    # A long funnel that half the visits follow: ten page views, then a goal.
    steps = [make_step() for _ in range(10)]
    make_funnel(steps=steps, presets=[preset], share="0.5")
    with_funnel = estimate_for(preset, target)
    assert with_funnel.hits_per_visit > without + 2
    run = Run.objects.create_run(preset=preset, targets=[target], seed=777)
    assert with_funnel.hits_per_visit == pytest.approx(generated_hits_per_visit(run), rel=0.05)
