"""What the preview page shows: expected vs simulated reach per step, and one sample journey.

Both come from the traffic model (``simulate_funnel`` and ``sample_funnel_visit``), so
the preview shows what runs will do, not a second implementation of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from funnels.models import Funnel
from trafficinator.traffic import hit_kind, sample_funnel_visit, simulate_funnel

CHART_BAR_WIDTH = 28
CHART_GAP = 36  # between steps
CHART_HEIGHT = 160
CHART_TOP = 16
# Journeys tried for a sample that reaches the last step (enough for a 1 % overall reach).
SAMPLE_ATTEMPTS = 500
# The sample journey is dated at a fixed noon so the same seed always shows the same hits.
SAMPLE_START = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class StepReach:
    number: int
    kind: str
    summary: str
    expected: float  # share of journeys expected to reach the step
    simulated: float  # share that did in the simulation
    count: int  # journeys that did

    @property
    def expected_label(self) -> str:
        return f"{self.expected:.1%}"

    @property
    def simulated_label(self) -> str:
        return f"{self.simulated:.1%}"

    @property
    def difference_label(self) -> str:
        """Simulated minus expected, in percentage points."""
        return f"{(self.simulated - self.expected) * 100:+.1f} pp"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    width: float
    label: str
    number: int

    @property
    def center(self) -> float:
        return self.x + self.width / 2


@dataclass(frozen=True)
class SampleHit:
    offset_seconds: float
    kind: str
    params: list[tuple[str, str]]


@dataclass(frozen=True)
class Preview:
    journeys: int
    seed: int
    steps: list[StepReach]
    sample: list[SampleHit]
    sample_constant: list[tuple[str, str]]
    chart_width: int
    chart_height: int
    expected_bars: list[Bar]
    simulated_bars: list[Bar]
    axis_y: float

    @property
    def completed(self) -> int:
        return self.steps[-1].count if self.steps else 0

    @property
    def sample_steps_reached(self) -> int:
        """Steps the sample journey took (its closing ping is not a step)."""
        return sum(1 for hit in self.sample if hit.kind != "ping")

    @property
    def sample_has_ping(self) -> bool:
        return any(hit.kind == "ping" for hit in self.sample)


def build_preview(funnel: Funnel, journeys: int, seed: int) -> Preview:
    spec = funnel.to_spec()
    steps = funnel.ordered_steps()
    simulation = simulate_funnel(spec, journeys, seed)
    reach = [
        StepReach(number, step.get_kind_display(), step.summary(), expected, simulated, count)
        for number, (step, expected, simulated, count) in enumerate(
            zip(steps, simulation.expected_reach, simulation.reach_rates, simulation.reach, strict=True), start=1
        )
    ]
    visit = sample_journey(spec, seed, len(steps))
    start = visit.hits[0].due if visit.hits else 0.0
    sample = [SampleHit(hit.due - start, hit_kind(hit.params), sorted(hit.params.items())) for hit in visit.hits]
    expected_bars, simulated_bars = _bars(reach)
    return Preview(
        journeys=journeys,
        seed=seed,
        steps=reach,
        sample=sample,
        sample_constant=sorted(visit.params.items()),
        chart_width=max(1, len(reach)) * (2 * CHART_BAR_WIDTH + CHART_GAP) + CHART_GAP,
        chart_height=CHART_TOP + CHART_HEIGHT + 24,
        expected_bars=expected_bars,
        simulated_bars=simulated_bars,
        axis_y=CHART_TOP + CHART_HEIGHT,
    )


def sample_journey(spec, seed: int, step_count: int):
    """The sample visit: the first of the seed's journeys that reaches the funnel's last
    step (the steps the funnel exists for), else the one that got furthest. Drop-offs are
    drawn as in a run, so a plain first journey often stopped after a step or two."""
    best, best_steps = None, -1
    for attempt in range(SAMPLE_ATTEMPTS):
        visit = sample_funnel_visit(spec, seed=f"{seed}:{attempt}" if attempt else seed, start=SAMPLE_START)
        steps = sum(1 for hit in visit.hits if hit_kind(hit.params) != "ping")
        if steps > best_steps:
            best, best_steps = visit, steps
        if steps >= step_count:
            break
    return best


def _bars(reach: list[StepReach]) -> tuple[list[Bar], list[Bar]]:
    """Two bars per step (expected, simulated), heights as the share reaching the step."""
    expected: list[Bar] = []
    simulated: list[Bar] = []
    for index, step in enumerate(reach):
        x = CHART_GAP + index * (2 * CHART_BAR_WIDTH + CHART_GAP)
        for bars, share, offset in ((expected, step.expected, 0), (simulated, step.simulated, CHART_BAR_WIDTH)):
            height = round(share * CHART_HEIGHT, 1)
            bars.append(
                Bar(
                    x + offset,
                    CHART_TOP + CHART_HEIGHT - height,
                    height,
                    CHART_BAR_WIDTH - 2,
                    f"{share:.1%}",
                    step.number,
                )
            )
    return expected, simulated
