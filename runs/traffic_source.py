"""Where a live run's visits come from: the traffic model, fed from the run's snapshot.

This is the one place that turns Django objects (Run, RunTarget, Target, funnels) into the
traffic model's plain inputs, so the loader itself stays about pacing and sending."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from funnels.models import Funnel
from presets.models import catalog_with_overrides, profile_from_knobs
from runs.models import Run, RunTarget
from runs.traffic import Catalog, Profile, Visit, encode_visit, live_visits
from runs.traffic.encoding import encode_params


@dataclass
class TargetStream:
    run_target: RunTarget
    visits: Iterator[Visit]
    visits_per_day: int
    timezone: str
    notice: str = ""
    cdt_format: str = "datetime"

    def encode(self, visit: Visit, *, with_cdt: bool) -> list[str]:
        """Bulk entries ("?idsite=...") in time order, with cdt when asked."""
        return encode_visit(visit, cdt=self.cdt_format if with_cdt else None, prefix="?")

    def encode_timed(self, visit: Visit) -> list[tuple[float, str]]:
        """(due time, single-hit POST body) pairs. No cdt: Matomo dates a live hit on
        arrival, so a hit sent a little late can never be "older" than one it recorded."""
        head = encode_params(visit.params) + "&"
        return [(hit.due, head + encode_params(hit.params)) for hit in visit.hits]


def run_profile(run: Run, visits_per_day: int) -> Profile:
    return profile_from_knobs(run.profile, visits_per_day=max(1, visits_per_day))


def run_catalog(run: Run) -> Catalog:
    return catalog_with_overrides(run.profile.get("catalog_overrides"))


def run_funnels(run: Run) -> list:
    """The funnels that apply to the run's preset, as traffic-model specs."""
    if run.preset is None:
        return []
    return Funnel.objects.specs_for_preset(run.preset)


def stream_seed(run: Run, run_target: RunTarget) -> str:
    """Each target gets its own stream, the same for the same seed and target in every run
    (so --seed reproduces a run). A resumed run starts its stream at a new time, which gives
    it new arrivals, and its order ids carry the new claim, so nothing is replayed."""
    return hashlib.sha256(f"{run.seed}:{run_target.target_id}".encode()).hexdigest()[:16]


def target_streams(run: Run, run_targets: list[RunTarget], *, start: float) -> list[TargetStream]:
    catalog = run_catalog(run)
    funnels = run_funnels(run)
    claim = run.claim_token.hex[:6] if run.claim_token else "local"
    streams = []
    for run_target in run_targets:
        target = run_target.target
        rate = run_target.share_of(run, run_targets)
        if rate <= 0:
            continue
        profile = run_profile(run, rate)
        zone = target.effective_timezone(profile.timezone)
        notice = ""
        if profile.randomize_countries and not target.has_token:
            notice = (
                f"Target {target.name} has no token: visitor countries (cip) are not sent to it, "
                "so its visits all come from this machine's IP."
            )
        visits = live_visits(
            profile,
            catalog,
            funnels,
            seed=stream_seed(run, run_target),
            site_id=target.site_id,
            token_present=target.has_token,
            order_id_prefix=f"r{run.pk}-{claim}",
            timezone=zone,
            start=datetime.fromtimestamp(start, UTC),
        )
        streams.append(TargetStream(run_target, visits, rate, zone, notice))
    return streams
