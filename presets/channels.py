"""Whether Matomo files a catalog's referrers in the channel the catalog puts them in.

Matomo decides a visit's channel from the first hit's referrer with its own lists of
search engines and social networks (matomo-org/searchengine-and-social-list), not from
our catalog's sections: ``https://www.facebook.com/`` listed as a social network would
be filed as the *search engine* Facebook, and a search engine Matomo does not know as a
website. The built-in catalog is tested against those lists (targets/tests/test_fidelity.py);
a preset's catalog overrides are checked here the same way, with the classifier the fake
Matomo uses (trafficinator.referrers, Matomo 5's rules and lists).
"""

from __future__ import annotations

from urllib.parse import quote_plus, urlsplit

from trafficinator.referrers import classify, search_engine
from trafficinator.traffic import Catalog

# What a misfiled referrer becomes, in the words of Matomo's Channel Type report.
_FILED_AS = {
    "search": "a search engine",
    "social": "a social network",
    "website": "a website",
    "direct": "a direct entry (the site's own address)",
    "campaign": "a campaign",
}
SAMPLE_TERM = "hiking boots"


def _filed(channel: str, name: str) -> str:
    return _FILED_AS.get(channel, channel) + (f" ({name})" if name and channel in ("search", "social") else "")


def misfiled_referrers(catalog: Catalog) -> list[str]:
    """One sentence per referrer Matomo would file elsewhere than the catalog means it."""
    site_host = urlsplit(catalog.site_url).hostname or ""
    hosts = (site_host,) if site_host else ()
    problems = []
    for engine in catalog.search_engines:
        url = f"{engine.url}{'&' if '?' in engine.url else '?'}{engine.keyword_param}={quote_plus(SAMPLE_TERM)}"
        channel, name = classify(url, "", hosts)
        if channel != "search":
            problems.append(
                f"search_engines: Matomo files {engine.url} as {_filed(channel, name)}, not as a search engine "
                f"(Matomo's search-engine list has no engine at this host and path that takes the term in "
                f"“{engine.keyword_param}”)"
            )
            continue
        found = search_engine(url)
        if found is not None and found[1] != SAMPLE_TERM:
            problems.append(
                f"search_engines: Matomo files {engine.url} as the search engine {found[0]} but does not read the "
                f"search term from “{engine.keyword_param}”, so its keywords would be “not defined”"
            )
    for section, referrers, meant in (
        ("social_networks", catalog.social_networks, "social"),
        ("websites", catalog.websites, "website"),
    ):
        for referrer in referrers:
            channel, name = classify(referrer.url, "", hosts)
            if channel != meant:
                problems.append(
                    f"{section}: Matomo files {referrer.url} as {_filed(channel, name)}, not as {_FILED_AS[meant]} "
                    "(Matomo's own search-engine and social lists decide)"
                )
    return problems
