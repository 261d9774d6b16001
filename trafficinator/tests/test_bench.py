import io

import pytest
from django.core.management import call_command


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
    assert [line.split(":")[0] for line in lines] == ["live single", "live bulk", "overload"]
    for line in lines:
        assert "hits per loader CPU-second" in line and "saturated=" in line and "delivered" in line
    assert "peak RSS" in lines[0] and "peak RSS" in lines[1]
    assert "stopped in" in lines[2] and "status stopped" in lines[2] and "saturated=True" in lines[2]
