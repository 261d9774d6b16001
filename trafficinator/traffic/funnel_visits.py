"""The hits of a funnel visit: one hit per step, until the visitor drops off.

Page-level hits (events, outlinks, goals, cart updates, ...) carry the ``pv_id`` and URL
of the latest page view; a step that comes before any page view gets the site's home
URL and a fresh ``pv_id``. See funnels.py for the semantics of shares and delays.
"""

from __future__ import annotations

from decimal import Decimal
from random import Random
from typing import Any

from .catalog_items import title_from_url
from .ecommerce import Line, cents, order_from_lines
from .funnels import FunnelSpec, FunnelStep, parse_items
from .hits import Entry, HitFactory
from .site_model import SiteModel


class FunnelVisits:
    def __init__(self, site: SiteModel, hits: HitFactory, pause_min: float, pause_max: float):
        self.site = site
        self.hits = hits
        self.pause_min = pause_min
        self.pause_span = pause_max - pause_min

    def build(
        self, rng: Random, spec: FunnelSpec, device: str, referrer: str | None, campaign_query: str
    ) -> list[Entry]:
        random = rng.random
        state = _State(self.site.base + "/", self.hits.new_pv_id(rng))
        entries: list[Entry] = []
        t = 0.0
        last = len(spec.steps) - 1
        for number, step in enumerate(spec.steps):
            if number:
                t += step.delay_min + (step.delay_max - step.delay_min) * random()
            params = self._step(rng, step, device, state)
            if number == 0:
                if referrer:
                    params["urlref"] = referrer
                if campaign_query and step.kind in ("pageview", "product_view"):
                    url = params["url"]
                    params["url"] = f"{url}{'&' if '?' in url else '?'}{campaign_query}"
                    state.url = state.page_url = params["url"]
            entries.append((t, params, None))
            if number == last or random() >= step.continue_probability:
                break
        if len(entries) > 1 and state.seen_page:
            # Give the last page its time on page, as an ordinary visit does.
            t += self.pause_min + self.pause_span * random()
            entries.append((t, self.hits.ping(state.page_url, state.page_pv), None))
        return entries

    def _step(self, rng: Random, step: FunnelStep, device: str, state: _State) -> dict:
        hits, site, kind, value = self.hits, self.site, step.kind, step.value
        if kind in ("pageview", "product_view"):
            pv = hits.new_pv_id(rng)
            if kind == "pageview":
                url = site.absolute(value("url"))
                params = hits.pageview(rng, url, value("title") or title_from_url(url), device, pv)
            else:
                sku, name, category = str(value("sku")), str(value("name")), value("category", "")
                url = site.absolute(value("url")) if value("url") else f"{site.base}/product/{sku}"
                params = hits.pageview(
                    rng, url, value("title") or (f"{category} / {name}" if category else name), device, pv
                )
                price = value("price")
                hits.add_product(params, sku, name, category, None if price is None else cents(Decimal(str(price))))
            state.url = state.page_url = url
            state.pv = state.page_pv = pv
            state.seen_page = True
            return params
        if kind == "search":
            keyword = str(value("keyword"))
            count = value("count")
            if count is None:
                count = int(random_count(rng))
            url = site.absolute(site.search_url_for(keyword))
            state.pv = hits.new_pv_id(rng)
            state.url = url
            return hits.search(url, keyword, value("category", ""), count, state.pv)
        url, pv = state.url, state.pv
        if kind == "event":
            raw = value("value")
            return hits.event(
                url,
                pv,
                str(value("category")),
                str(value("action")),
                str(value("name", "")),
                None if raw is None else float(raw),
            )
        if kind == "outlink":
            return hits.outlink(str(value("url")), pv)
        if kind == "download":
            return hits.download(site.absolute(str(value("url"))), pv)
        if kind == "goal":
            revenue = value("revenue")
            return hits.goal(url, pv, int(value("idgoal")), None if revenue is None else cents(Decimal(str(revenue))))
        if kind == "cart_update":
            return hits.cart_update(url, pv, _lines(value("items")))
        if kind == "order":
            amounts = {
                name: (None if value(name) is None else cents(Decimal(str(value(name)))))
                for name in ("revenue", "shipping", "tax", "discount")
            }
            order = order_from_lines(
                _lines(value("items")),
                amounts["shipping"] or 0,
                amounts["discount"] or 0,
                amounts["tax"],
                amounts["revenue"],
            )
            return hits.order(url, pv, order)
        if kind in ("content_impression", "content_interaction"):
            target = value("target", "")
            return hits.content(
                url,
                pv,
                str(value("name")),
                str(value("piece", "")),
                site.absolute(target) if target else "",
                value("interaction", "click") if kind == "content_interaction" else "",
            )
        raise ValueError(f"unknown funnel step kind {kind!r}")


class _State:
    """The page the visitor is on, for page-level hits."""

    __slots__ = ("page_pv", "page_url", "pv", "seen_page", "url")

    def __init__(self, home: str, pv: str):
        self.url = self.page_url = home
        self.pv = self.page_pv = pv
        self.seen_page = False


def random_count(rng: Random) -> int:
    # Mostly a handful of results, sometimes none.
    return 0 if rng.random() < 0.1 else 1 + int(rng.random() * 30)


def _lines(raw: Any) -> list[Line]:
    return [
        Line(sku, name, category, cents(price), quantity) for sku, name, category, price, quantity in parse_items(raw)
    ]
