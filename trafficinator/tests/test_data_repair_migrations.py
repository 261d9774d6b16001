"""The data-repair steps of the migrations that added CHECK constraints (issue 14): rows
stored by older versions with values the constraints refuse are repaired as each migration
says, and good rows are left as they were. Each test migrates its app back to the migration
before, stores the legacy rows with the historical models, migrates forward through the
repair and reads the rows back.

NaN: SQLite stores it as NULL, so a NaN weight (a NOT NULL column) cannot exist there and a
NaN rate limit is already "no limit"; those tests run on PostgreSQL only."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.apps.registry import Apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from trafficinator.testing import make_target

RUNS_BEFORE = ("runs", "0004_claim_epoch")
RUNS_REPAIR = ("runs", "0005_run_bounds_checks")
BACKFILL_BEFORE = ("backfill", "0004_requests_in_flight")
BACKFILL_REPAIR = ("backfill", "0005_bounds_checks_and_frozen_funnels")

# The tables the legacy rows go in, children first.
RUNS_TABLES = ("runs_runtarget", "runs_run")
BACKFILL_TABLES = ("backfill_backfillplan",)


def migrate(target: tuple[str, str]) -> Apps:
    """Migrate the test database to ``target``; the models as they were there."""
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


@contextmanager
def migrated_back_to(target: tuple[str, str], tables: tuple[str, ...]) -> Iterator[Apps]:
    """The database at ``target`` for the test's legacy rows, and at the latest migrations
    again afterwards, whatever happened, so the next tests of this process find the schema
    they expect. The rows in ``tables`` go first: a row a broken repair left in place would
    make every later migration fail too, and fail every later test with it."""
    try:
        yield migrate(target)
    finally:
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")  # noqa: S608 (fixed names)
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def skip_nan_on_sqlite() -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite stores NaN as NULL: such a row cannot exist there")


def legacy_runs(apps: Apps, rates: dict[str, int]) -> dict[str, int]:
    """One run per rate in ``rates`` (name: visits per day); their ids by name."""
    run_model = apps.get_model("runs", "Run")
    return {
        name: run_model.objects.create(preset_name="Light", profile={}, seed=1, visits_per_day=rate).pk
        for name, rate in rates.items()
    }


def legacy_run_targets(apps: Apps, run_id: int, rows: dict[str, tuple[float, int | None]]) -> dict[str, int]:
    """One target of run ``run_id`` per row in ``rows`` (name: (weight, visits per day)),
    each on a target of its own (a run lists a target once); their ids by name."""
    run_target_model = apps.get_model("runs", "RunTarget")
    return {
        name: run_target_model.objects.create(
            run_id=run_id, target_id=make_target().pk, weight=weight, visits_per_day=rate
        ).pk
        for name, (weight, rate) in rows.items()
    }


@pytest.mark.django_db(transaction=True)
def test_runs_repair_gives_bad_weights_the_default_and_clamps_rates_into_range():
    with migrated_back_to(RUNS_BEFORE, RUNS_TABLES) as apps:
        runs = legacy_runs(apps, {"zero": 0, "huge": 10**8, "good": 1000, "lowest": 1, "highest": 50_000_000})
        run_targets = legacy_run_targets(
            apps,
            runs["good"],
            {
                "infinite": (math.inf, None),
                "minus infinite": (-math.inf, None),
                "zero weight": (0.0, None),
                "negative": (-2.0, None),
                "too heavy": (2e6, None),
                "zero rate": (1.0, 0),
                "huge rate": (1.0, 10**8),
                "good weight": (2.5, None),
                "tiny weight": (1e-6, None),
                "heaviest": (1e6, None),
                "good rate": (3.0, 5000),
                "highest rate": (1.0, 50_000_000),
            },
        )

        apps = migrate(RUNS_REPAIR)
        run_model, run_target_model = apps.get_model("runs", "Run"), apps.get_model("runs", "RunTarget")
        rates = dict(run_model.objects.values_list("pk", "visits_per_day"))
        assert {name: rates[pk] for name, pk in runs.items()} == {
            "zero": 1,
            "huge": 50_000_000,
            "good": 1000,
            "lowest": 1,
            "highest": 50_000_000,
        }
        stored = {row[0]: row[1:] for row in run_target_model.objects.values_list("pk", "weight", "visits_per_day")}
        assert {name: stored[pk] for name, pk in run_targets.items()} == {
            "infinite": (1.0, None),
            "minus infinite": (1.0, None),
            "zero weight": (1.0, None),
            "negative": (1.0, None),
            "too heavy": (1.0, None),
            "zero rate": (1.0, None),
            "huge rate": (1.0, 50_000_000),
            "good weight": (2.5, None),
            "tiny weight": (1e-6, None),
            "heaviest": (1e6, None),
            "good rate": (3.0, 5000),
            "highest rate": (1.0, 50_000_000),
        }


@pytest.mark.django_db(transaction=True)
def test_runs_repair_gives_a_nan_weight_the_default():
    skip_nan_on_sqlite()
    with migrated_back_to(RUNS_BEFORE, RUNS_TABLES) as apps:
        runs = legacy_runs(apps, {"run": 1000})
        run_targets = legacy_run_targets(apps, runs["run"], {"nan": (math.nan, None), "good": (2.5, None)})

        apps = migrate(RUNS_REPAIR)
        weights = dict(apps.get_model("runs", "RunTarget").objects.values_list("pk", "weight"))
        assert {name: weights[pk] for name, pk in run_targets.items()} == {"nan": 1.0, "good": 2.5}


def legacy_plans(apps: Apps, limits: dict[str, float | None]) -> dict[str, int]:
    """One draft plan per requests-per-second limit in ``limits`` (name: limit); their ids
    by name."""
    plan_model = apps.get_model("backfill", "BackfillPlan")
    fields = {"preset_name": "Light", "start_date": "2026-01-01", "end_date": "2026-01-02", "visits_per_day": 100}
    return {
        name: plan_model.objects.create(**fields, max_requests_per_second=limit).pk for name, limit in limits.items()
    }


@pytest.mark.django_db(transaction=True)
def test_backfill_repair_turns_a_rate_limit_out_of_range_into_no_limit():
    with migrated_back_to(BACKFILL_BEFORE, BACKFILL_TABLES) as apps:
        plans = legacy_plans(
            apps,
            {
                "infinite": math.inf,
                "minus infinite": -math.inf,
                "zero": 0.0,
                "negative": -1.0,
                "too slow": 0.001,
                "too fast": 20_000.0,
                "no limit": None,
                "slowest": 0.01,
                "good": 2.5,
                "fastest": 10_000.0,
            },
        )

        apps = migrate(BACKFILL_REPAIR)
        limits = dict(apps.get_model("backfill", "BackfillPlan").objects.values_list("pk", "max_requests_per_second"))
        assert {name: limits[pk] for name, pk in plans.items()} == {
            "infinite": None,
            "minus infinite": None,
            "zero": None,
            "negative": None,
            "too slow": None,
            "too fast": None,
            "no limit": None,
            "slowest": 0.01,
            "good": 2.5,
            "fastest": 10_000.0,
        }


@pytest.mark.django_db(transaction=True)
def test_backfill_repair_turns_a_nan_rate_limit_into_no_limit():
    skip_nan_on_sqlite()
    with migrated_back_to(BACKFILL_BEFORE, BACKFILL_TABLES) as apps:
        plans = legacy_plans(apps, {"nan": math.nan, "good": 2.5})

        apps = migrate(BACKFILL_REPAIR)
        limits = dict(apps.get_model("backfill", "BackfillPlan").objects.values_list("pk", "max_requests_per_second"))
        assert {name: limits[pk] for name, pk in plans.items()} == {"nan": None, "good": 2.5}
