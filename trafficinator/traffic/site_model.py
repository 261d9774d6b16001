"""A catalog compiled for fast sampling: absolute URLs, popularity weights, pickers.

Popularity is Zipf-like over a permutation that depends only on the catalog (not the
run seed), so a site's popular pages stay popular across runs. Landing pages follow a
different distribution from inner pages: the home page and section indexes take a large
share of entrances, and the popular entry articles are not the popular inner pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import quote_plus, urlsplit

from .catalog import Catalog
from .sampling import Weighted, stable_shuffle, zipf_weights

if TYPE_CHECKING:
    from .catalog_items import Campaign, Page


# Share of landings on the home page, on index pages (paths ending in '/'), and on leaves.
LANDING_SHARES = {"home": 0.22, "index": 0.18, "leaf": 0.60}
INNER_ZIPF = 0.9
LANDING_ZIPF = 0.95
PRODUCT_ZIPF = 0.8
SEARCH_TERM_ZIPF = 0.8

_CAMPAIGN_KEYS = {
    "mtm": ("mtm_campaign", "mtm_source", "mtm_medium", "mtm_keyword", "mtm_content"),
    "utm": ("utm_campaign", "utm_source", "utm_medium", "utm_term", "utm_content"),
    "pk": ("pk_campaign", "pk_source", "pk_medium", "pk_keyword", "pk_content"),
}


class SiteModel:
    def __init__(self, catalog: Catalog, site_url: str | None):
        base = (site_url or catalog.site.url).rstrip("/")
        self.base = base
        absolute = self.absolute
        site = catalog.site

        pages = catalog.pages
        self.page_urls = [absolute(p.url) for p in pages]
        self.page_titles = [p.title for p in pages]
        self._build_page_pickers(pages)

        self.products = catalog.products
        self.product_urls = [absolute(p.url) if p.url else f"{base}/product/{quote_plus(p.sku)}" for p in self.products]
        title_by_url = dict(zip(self.page_urls, self.page_titles, strict=True))
        self.product_titles = [
            title_by_url.get(url) or f"{p.category} / {p.name}"
            for p, url in zip(self.products, self.product_urls, strict=True)
        ]
        product_by_url = {url: i for i, url in enumerate(self.product_urls)}
        # Browsing onto a product page sends a product view (_pk* parameters).
        self.page_product = [product_by_url.get(url) for url in self.page_urls]
        self.product_picker = _zipf_picker(len(self.products), PRODUCT_ZIPF, "products")

        terms = catalog.search_terms
        self.search_terms = terms
        self.search_urls = [absolute(site.search_url.replace("{keyword}", quote_plus(t.term))) for t in terms]
        self.term_picker = Weighted(range(len(terms)), zipf_weights(len(terms), SEARCH_TERM_ZIPF))

        self.search_url_template = site.search_url
        self.cart_url = absolute(site.cart_url)
        self.checkout_url = absolute(site.checkout_url)
        self.confirmation_url = absolute(site.confirmation_url)

        self.outlinks = catalog.outlinks
        self.downloads = [absolute(d) for d in catalog.downloads]
        self.click_events = catalog.click_events
        self.events = catalog.events
        self.goals = Weighted(catalog.goals, [g.weight for g in catalog.goals])
        self.content = [(c.name, c.piece, absolute(c.target) if c.target else "") for c in catalog.content]

        self.search_engines = Weighted(range(len(catalog.search_engines)), [e.weight for e in catalog.search_engines])
        # referrer URL per (engine, term), built once
        self.search_referrers = [
            [f"{e.url}{'&' if '?' in e.url else '?'}{e.keyword_param}={quote_plus(t.term)}" for t in terms] or [e.url]
            for e in catalog.search_engines
        ]
        self.social = Weighted([r.url for r in catalog.social_networks], [r.weight for r in catalog.social_networks])
        self.websites = Weighted([r.url for r in catalog.websites], [r.weight for r in catalog.websites])
        self.campaigns = Weighted(catalog.campaigns, [c.weight for c in catalog.campaigns])

        self.countries = Weighted(catalog.countries, [c.weight for c in catalog.countries])
        self.country_networks = {c.code: _networks(c.networks) for c in catalog.countries}
        self.languages = Weighted(
            [lang.value for lang in catalog.languages], [lang.weight for lang in catalog.languages]
        )
        self.user_agents = {}
        for device in ("desktop", "mobile", "tablet"):
            agents = [a for a in catalog.user_agents if a.device == device]
            self.user_agents[device] = Weighted(
                [
                    (a.ua, Weighted([r for r, _ in a.resolutions], [w for _, w in a.resolutions]), a.uadata)
                    for a in agents
                ],
                [a.weight for a in agents],
            )

    def absolute(self, url: str) -> str:
        return url if "://" in url else self.base + url

    def search_url_for(self, keyword: str) -> str:
        return self.absolute(self.search_url_template.replace("{keyword}", quote_plus(keyword)))

    def campaign_query(self, campaign: Campaign, style: str) -> str:
        keys = _CAMPAIGN_KEYS[style]
        values = (campaign.name, campaign.source, campaign.medium, campaign.keyword, campaign.content)
        return "&".join(f"{k}={quote_plus(v)}" for k, v in zip(keys, values, strict=True) if v)

    def _build_page_pickers(self, pages: Sequence[Page]) -> None:
        count = len(pages)
        paths = [urlsplit(url).path or "/" for url in self.page_urls]
        kinds = ["home" if p == "/" else "index" if p.endswith("/") else "leaf" for p in paths]

        inner = [0.0] * count
        for rank, index in enumerate(stable_shuffle(range(count), "inner"), start=1):
            inner[index] = 1.0 / rank**INNER_ZIPF
        self.inner = Weighted(range(count), inner)

        landing = [0.0] * count
        present = {k: [i for i in range(count) if kinds[i] == k] for k in LANDING_SHARES}
        share_total = sum(LANDING_SHARES[k] for k, members in present.items() if members)
        for kind, members in present.items():
            if not members:
                continue
            order = stable_shuffle(members, f"landing-{kind}")
            weights = zipf_weights(len(order), LANDING_ZIPF)
            scale = LANDING_SHARES[kind] / share_total / sum(weights)
            for index, weight in zip(order, weights, strict=True):
                landing[index] = weight * scale
        self.landing = Weighted(range(count), landing)

        # Navigation mostly stays in the same top-level section.
        groups: dict[str, list[int]] = {}
        for index, path in enumerate(paths):
            groups.setdefault(path.strip("/").split("/")[0], []).append(index)
        self.page_group: list[int] = [0] * count
        self.group_pickers: list[Weighted] = []
        for group_id, members in enumerate(groups.values()):
            for index in members:
                self.page_group[index] = group_id
            self.group_pickers.append(Weighted(members, [inner[i] for i in members]))


def _zipf_picker(count: int, exponent: float, label: str) -> Weighted:
    weights = [0.0] * count
    for rank, index in enumerate(stable_shuffle(range(count), label), start=1):
        weights[index] = 1.0 / rank**exponent
    return Weighted(range(count), weights)


def _networks(cidrs: Iterable[str]) -> Weighted:
    import ipaddress

    blocks = [ipaddress.IPv4Network(c) for c in cidrs]
    return Weighted([(int(b.network_address), b.num_addresses) for b in blocks], [b.num_addresses for b in blocks])


@lru_cache(maxsize=16)
def compile_site(catalog: Catalog, site_url: str | None) -> SiteModel:
    """Compiled once per (catalog, site URL); catalogs are frozen and hashable."""
    return SiteModel(catalog, site_url)
