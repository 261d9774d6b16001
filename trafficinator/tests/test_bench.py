import io

import pytest
from django.core.management import CommandError, call_command


def test_bench_prints_every_figure_against_the_local_server():
    """Small sizes: this checks that the benchmark works, not how fast the machine is."""
    out = io.StringIO()
    call_command(
        "bench",
        "--only", "single", "--only", "bulk", "--only", "stream",
        "--hits", "300", "--bulk-hits", "2000", "--visits", "300",
        stdout=out,
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["single", "bulk", "stream"]
    assert "accepted 300/300" in lines[0] and "hits per CPU-second" in lines[0]
    assert "accepted 2,000/2,000" in lines[1]
    assert "300 visits" in lines[2] and "highest" in lines[2]


@pytest.mark.django_db(transaction=True)
def test_bench_runs_the_real_live_loader_and_an_overload_with_its_saturation_figures():
    """Short runs: the point is that every figure is measured and printed."""
    out = io.StringIO()
    call_command(
        "bench", "--only", "live", "--only", "overload", "--live-seconds", "3", "--overload-seconds", "3",
        stdout=out,
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "live single, 50,000,000 visits/day on 1 target(s)",
        "live single, 800,000,000 visits/day on 16 target(s)",
        "live bulk, 50,000,000 visits/day on 1 target(s)",
        "live bulk, 1,600,000,000 visits/day on 32 target(s)",
        "overload",
    ]
    for line in lines:
        assert "hits per loader CPU-second" in line and "saturated=" in line and "delivered" in line
    assert all("peak RSS" in line for line in lines[:4])
    assert "at capacity" in lines[1] and "at capacity" in lines[3] and "at capacity" not in lines[0]
    assert "stopped in" in lines[4] and "status stopped" in lines[4] and "saturated=True" in lines[4]


@pytest.mark.django_db(transaction=True)
def test_bench_runs_one_bulk_run_with_one_and_with_two_shards_and_prints_the_scaling():
    """Short runs: every shard's loader runs in its own process and is measured."""
    out = io.StringIO()
    call_command("bench", "--only", "shards", "--shard-seconds", "3", "--server-workers", "2", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["shards 1", "shards 2"]
    for line in lines:
        assert "hits/s" in line and "hits per loader CPU-second" in line and "load average" in line
        assert "server recorded" in line and "saturated=" in line
    assert "scaling 1.00x 1 shard(s)" in lines[0]
    assert len(lines[1].split("per shard ")[1].split(" hits")[0].split(", ")) == 2  # both shards sent


def test_bench_refuses_shard_counts_that_are_not_numbers():
    with pytest.raises(CommandError, match="--shard-counts"):
        call_command("bench", "--only", "shards", "--shard-counts", "1,two", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_bench_sends_into_a_matomo_sized_fake_next_to_the_bare_sender():
    """A small day and a short live run: every path sends and prints its ratio to bare."""
    out = io.StringIO()
    call_command("bench", "--only", "matomo", "--matomo-visits", "300", "--live-seconds", "3", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "matomo",
        "matomo bare",
        "matomo bare generating",
        "matomo sender",
        "matomo backfill",
        "matomo live",
        "matomo",
    ]
    for line in lines[2:6]:
        assert "ratio to bare" in line and "CPU" in line
    assert "bare generating's" in lines[4] and "bare generating's" in lines[5]
    assert "visits_started=" in lines[5] and "errors=0" in lines[5]
