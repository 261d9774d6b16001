"""Goal conversions Matomo will accept.

Matomo rejects a conversion for a goal the site does not have (HTTP 400 for a single hit,
``invalid`` in bulk, "idGoal N does not exist" in its log), and a new site has no goals.
A ``SiteGoals`` built from the site's goal list (``Goals.getGoals``) decides what each
conversion becomes: the site's goal with the same name as the catalog goal (names compare
case-insensitively), else the site's goal with the same id; a conversion for neither is
left out and counted, so a run can say what it did not send.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from .catalog import Catalog


class SiteGoals:
    def __init__(self, site_goals: Mapping[int, str], catalog: Catalog | None = None):
        self.site_goals = {int(idgoal): str(name) for idgoal, name in site_goals.items()}
        self.left_out: Counter[int] = Counter()
        by_name = {name.strip().casefold(): idgoal for idgoal, name in self.site_goals.items()}
        # The site's own ids first, then catalog goals found by name (these win).
        self.mapping: dict[int, int] = {idgoal: idgoal for idgoal in self.site_goals}
        for goal in catalog.goals if catalog is not None else ():
            found = by_name.get(goal.name.strip().casefold())
            if found is not None:
                self.mapping[goal.idgoal] = found
            elif goal.idgoal not in self.site_goals:
                self.mapping.pop(goal.idgoal, None)

    def convert(self, idgoal: int) -> int | None:
        """The site goal id to send for a conversion of ``idgoal``, or None (left out)."""
        found = self.mapping.get(idgoal)
        if found is None:
            self.left_out[idgoal] += 1
        return found

    def missing(self, catalog: Catalog) -> list[str]:
        """Catalog goals the site has neither by name nor by id (what ``prepare`` creates)."""
        return [goal.name for goal in catalog.goals if goal.idgoal not in self.mapping]

    def describe_left_out(self) -> str:
        if not self.left_out:
            return ""
        parts = ", ".join(f"goal {idgoal}: {count}" for idgoal, count in sorted(self.left_out.items()))
        return f"{sum(self.left_out.values())} conversions left out (the site has no such goal; {parts})"
