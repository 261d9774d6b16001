"""Generate referrer_lists.json: Matomo's search-engine and social-network definitions.

Matomo classifies a visit's first referrer with two public lists kept in
matomo-org/searchengine-and-social-list (``SearchEngines.yml``, ``Socials.yml``), and
shortens host names with the country codes of ``core/Intl/Data/Resources/countries*.php``.
This script turns a checkout of those files into the compact JSON that
``trafficinator/referrers.py`` reads (stdlib only at run time, so no YAML there).

Run it after updating the lists (PyYAML needed only here) and commit the output:

    python trafficinator/data/build_referrer_lists.py SearchEngines.yml Socials.yml \\
        countries.php countries-extra.php SOURCE_COMMIT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml  # only to regenerate the data, never at run time

HERE = Path(__file__).parent


def main(search_yml: str, socials_yml: str, countries_php: str, extra_php: str, commit: str) -> None:
    engines = yaml.safe_load(Path(search_yml).read_text())
    socials = yaml.safe_load(Path(socials_yml).read_text())
    # Matomo's SearchEngine::transformData: one entry per URL pattern, the last one wins.
    search: dict[str, dict] = {}
    for name, definitions in engines.items():
        if not isinstance(definitions, list):
            continue
        for definition in definitions:
            data = {"name": name, "params": [str(p) for p in definition.get("params") or []]}
            if "hiddenkeyword" in definition:
                data["hiddenkeyword"] = [str(p) for p in definition.get("hiddenkeyword") or []]
            for url in definition.get("urls") or []:
                search[str(url)] = data
    social: dict[str, str] = {}
    for name, domains in socials.items():
        for domain in domains or []:
            social[str(domain)] = str(name)
    codes: set[str] = set()
    for path in (countries_php, extra_php):
        codes |= set(re.findall(r"^\s*'([a-z]{2})'\s*=>", Path(path).read_text(), re.MULTILINE))
    out = {
        "source": f"matomo-org/searchengine-and-social-list@{commit}",
        "countries": sorted(codes),
        "search_engines": dict(sorted(search.items())),
        "socials": social,  # Matomo tries them in file order
    }
    (HERE / "referrer_lists.json").write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:6])
