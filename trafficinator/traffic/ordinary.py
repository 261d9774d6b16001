"""Ordinary (non-funnel) visits: pages, dwell times, interactions, ecommerce.

Shape of a visit:

* A bounce (``bounce_share`` of visits) is exactly one page view and nothing else:
  no event, no ping (Matomo: one action, time on site 0).
* Otherwise the visit has between max(2, pageviews_min) and pageviews_max browse pages
  (the persona skews the count inside that range), plus product, cart and checkout
  pages when it orders or abandons a cart. Pauses between pages are drawn from
  [pause_min, pause_max]; the visit's duration from [visit_duration_min,
  visit_duration_max]. The last page gets the remaining time and a ``ping`` at the end,
  so Matomo's visit duration equals the drawn duration. When the pauses alone would
  exceed the duration, they are scaled down: the duration range wins.
* Interactions (search, outlink, download, events, content, goals) happen inside a
  page's dwell and carry that page's ``pv_id``. A site search is the last thing on its
  page and gets its own ``pv_id`` (it is a results page); the next page is a result.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from functools import lru_cache
from operator import itemgetter
from random import Random

from .catalog_items import title_from_url
from .ecommerce import Line, OrderPlanner, money
from .encoding import encode_pair, encode_params
from .hits import Entry, HitFactory, product_params
from .personas import Behaviour
from .profile import Profile
from .sampling import pv_ids
from .site_model import SiteModel

SAME_SECTION_PROBABILITY = 0.5  # next page in the current top-level section
OUTLINK_ON_LAST_PAGE = 0.6  # people often leave through an outlink
CONTENT_INTERACTION_PROBABILITY = 0.3
ABANDONED_CART_VISITS_CART = 0.5
CAMPAIGN_PAGES_KEPT = 4096  # campaign landing pages (and order line params) kept encoded
_FIRST = itemgetter(0)


Params = dict[str, str]
# url, title, product view params of the page (or None), and the page's parameters
# encoded: "url=...&action_name=...", "&_pks=..." (or ""), and "&urlref=..." for the
# page after it; see _shown.
PageShown = tuple[str, str, Params | None, str, str, str]
FollowUps = list[list[tuple[float, Params]]]  # per page: (share of its dwell time, hit)


class OrdinaryVisits:
    def __init__(self, profile: Profile, site: SiteModel, hits: HitFactory, planner: OrderPlanner):
        self.site = site
        self.hits = hits
        self.planner = planner
        self.bounce_share = profile.bounce_share
        self.pages_max = profile.pageviews_max
        self.pages_min = max(2, profile.pageviews_min) if profile.pageviews_max >= 2 else 1
        self.pause_min = profile.pause_min
        self.pause_span = profile.pause_max - profile.pause_min
        self.duration_min = profile.visit_duration_min * 60.0
        self.duration_span = (profile.visit_duration_max - profile.visit_duration_min) * 60.0
        self.page_index = {url: i for i, url in enumerate(site.page_urls)}
        self.browse_prices = tuple(planner.browse_price(index) for index in range(len(site.products)))
        # Each catalog page as it is shown while browsing, built once (a product page
        # shows its product at the browse price).
        self.pages_shown = _pages_shown(site, self.browse_prices)
        self.cart_page = _shown(site.cart_url, "Cart", None)
        self.checkout_page = _shown(site.checkout_url, "Checkout", None)
        self.confirmation_page = _shown(site.confirmation_url, "Checkout / Thank you", None)
        # The encoded url and title of each product's page (an order's lines show them).
        self.product_heads = [
            _url_and_title(url, title) for url, title in zip(site.product_urls, site.product_titles, strict=True)
        ]
        self.product_referrers = [f"&{encode_pair('urlref', url)}" for url in site.product_urls]
        # A line's product params encoded up to its price, by (sku, name, category).
        self._line_queries: dict[tuple[str, str, str], str] = {}
        # Landing pages with a campaign's query (or its own landing URL), as shown.
        self._campaign_pages: dict[tuple[str, int | None, str], PageShown] = {}
        self.shopping = bool(planner)  # (bool() of these is a call: asked once, not per visit)
        self.any_goal = bool(site.goals)

    def build(
        self,
        rng: Random,
        behaviour: Behaviour,
        device: str,
        referrer: str | None,
        campaign_query: str,
        campaign_landing: str,
    ) -> list[Entry]:
        """Hits as (seconds after the visit start, params, encoded params or None), in
        time order."""
        site, hits, random = self.site, self.hits, rng.random

        # Landing page (a campaign may name its own).
        pages_shown = self.pages_shown
        if campaign_landing:
            index = self.page_index.get(campaign_landing)
            landing = self._campaign_page(campaign_landing, index, campaign_query)
        else:
            items, bounds, total = site.landing.table  # Weighted.pick written out (hot)
            index = items[bisect_right(bounds, random() * total)]
            landing = self._campaign_page("", index, campaign_query) if campaign_query else pages_shown[index]
        pages: list[PageShown] = [landing]

        if random() < self.bounce_share:
            params, query = self._page_params(rng, pages[0], device, hits.new_pv_id(rng))
            if referrer:
                params["urlref"] = referrer
                query = f"{query}&{encode_pair('urlref', referrer)}"
            return [(0.0, params, query)]

        span = self.pages_max - self.pages_min + 1
        count = self.pages_min + int(random() ** behaviour.page_skew * span)
        current = index
        group_pickers, page_group = site.group_pickers, site.page_group
        # Weighted.pick written out (hot): inner pages, or pages of the current section.
        inner_items, inner_bounds, inner_total = site.inner.table
        for _ in range(count - 1):
            if current is not None and random() < SAME_SECTION_PROBABILITY:
                items, bounds, total = group_pickers[page_group[current]].table
                following = items[bisect_right(bounds, random() * total)]
            else:
                following = inner_items[bisect_right(inner_bounds, random() * inner_total)]
            if following == current:
                following = inner_items[bisect_right(inner_bounds, random() * inner_total)]
            pages.append(pages_shown[following])
            current = following

        follow: FollowUps = [[] for _ in pages]
        pvs = pv_ids(rng, len(pages))
        self._add_shopping(rng, behaviour, pages, follow, pvs)
        last = len(pages) - 1

        # Time: pauses between pages, the rest of the drawn duration on the last page.
        gaps = [self.pause_min + self.pause_span * random() ** behaviour.dwell_skew for _ in range(last)]
        duration = self.duration_min + self.duration_span * random() ** behaviour.dwell_skew
        paused = sum(gaps)
        if paused > 0.9 * duration:
            scale = 0.9 * duration / paused
            gaps = [g * scale for g in gaps]
            final = 0.1 * duration
        else:
            final = duration - paused
        dwell = [*gaps, final]

        search_pages = self._add_interactions(rng, behaviour, pages, follow, pvs, last)

        entries: list[Entry] = []
        t = 0.0
        previous_url = referrer
        previous_query = f"&{encode_pair('urlref', referrer)}" if referrer else ""
        pageview = hits.pageview_encoded
        for i, page in enumerate(pages):
            url, title, product, head, product_query, as_referrer = page
            # _page_params() written out (a call less per page).
            params, query = pageview(rng, url, title, head, device, pvs[i])
            if product is not None:
                params.update(product)
                query += product_query
            if previous_url:
                params["urlref"] = previous_url
                query += previous_query
            entries.append((t, params, query))
            page_follow = follow[i]
            if page_follow:
                page_follow.sort(key=_FIRST)
                span_i = dwell[i]
                entries.extend((t + fraction * span_i, p, None) for fraction, p in page_follow)
            search_url = search_pages.get(i)
            if search_url is None:
                previous_url, previous_query = url, as_referrer
            else:
                previous_url, previous_query = search_url, f"&{encode_pair('urlref', search_url)}"
            t += dwell[i]
        last_url, last_pv = pages[last][0], pvs[last]
        # hits.ping() and its encoding.
        entries.append((t, hits.ping(last_url, last_pv), f"ping=1&{encode_pair('url', last_url)}&pv_id={last_pv}"))
        return entries

    def _campaign_page(self, landing_url: str, index: int | None, campaign_query: str) -> PageShown:
        """The landing page of a campaign visit: its own landing URL (else the catalog
        page ``index``) with the campaign's query added, as shown (kept, bounded)."""
        key = (landing_url, index, campaign_query)
        found = self._campaign_pages.get(key)
        if found is not None:
            return found
        if landing_url:
            url = landing_url
            title = self.site.page_titles[index] if index is not None else title_from_url(url)
            product = _product_on(self.site, self.browse_prices, index)
        else:
            assert index is not None
            url, title, product = self.pages_shown[index][:3]
        if campaign_query:
            url = f"{url}{'&' if '?' in url else '?'}{campaign_query}"
        if len(self._campaign_pages) >= CAMPAIGN_PAGES_KEPT:
            self._campaign_pages.clear()
        found = self._campaign_pages[key] = _shown(url, title, product)
        return found

    def _line_query(self, line: Line) -> str:
        """ "&" + encode_params(product_params(line...)) for an order line: the product's
        part is encoded once, the price (digits and a dot) needs no quoting."""
        key = (line.sku, line.name, line.category)
        start = self._line_queries.get(key)
        if start is None:
            if len(self._line_queries) >= CAMPAIGN_PAGES_KEPT:
                self._line_queries.clear()
            start = self._line_queries[key] = "&" + encode_params(product_params(*key, None)) + "&_pkp="
        return start + money(line.price)

    def _page_params(self, rng: Random, page: PageShown, device: str, pv: str) -> tuple[Params, str]:
        """The page view's params and their encoding."""
        url, title, product, head, product_query, _ = page
        params, query = self.hits.pageview_encoded(rng, url, title, head, device, pv)
        if product is not None:
            params.update(product)
            query += product_query
        return params, query

    def _add_shopping(
        self, rng: Random, behaviour: Behaviour, pages: list[PageShown], follow: FollowUps, pvs: list[str]
    ) -> None:
        if not self.shopping:
            return
        u = rng.random()
        if u >= behaviour.order + behaviour.abandon:
            return
        ordering = u < behaviour.order
        site, hits = self.site, self.hits
        chosen, order = self.planner.plan(rng)
        for number, (product_index, line) in enumerate(zip(chosen, order.lines, strict=True)):
            url = site.product_urls[product_index]
            shown = product_params(line.sku, line.name, line.category, line.price)
            head = self.product_heads[product_index]
            as_referrer = self.product_referrers[product_index]
            pages.append((url, site.product_titles[product_index], shown, head, self._line_query(line), as_referrer))
            pv = hits.new_pv_id(rng)
            pvs.append(pv)
            follow.append([(0.5, hits.cart_update(url, pv, order.lines[: number + 1]))])
        if ordering or rng.random() < ABANDONED_CART_VISITS_CART:
            self._append_page(rng, pages, follow, pvs, self.cart_page)
        if ordering:
            self._append_page(rng, pages, follow, pvs, self.checkout_page)
            self._append_page(rng, pages, follow, pvs, self.confirmation_page)
            # The thank-you page reports the order as soon as it loads.
            follow[-1].append((0.02, hits.order(site.confirmation_url, pvs[-1], order)))

    def _append_page(
        self, rng: Random, pages: list[PageShown], follow: FollowUps, pvs: list[str], page: PageShown
    ) -> None:
        pages.append(page)
        pvs.append(self.hits.new_pv_id(rng))
        follow.append([])

    def _add_interactions(
        self, rng: Random, b: Behaviour, pages: list[PageShown], follow: FollowUps, pvs: list[str], last: int
    ) -> dict[int, str]:
        """Adds follow-up hits; returns {page: search URL} for pages that end in a search."""
        site, hits, random = self.site, self.hits, rng.random
        count = last + 1

        def on(page: int, params_for: Callable[..., Params]) -> None:
            follow[page].append((0.05 + 0.8 * random(), params_for(pages[page][0], pvs[page])))

        searches = {}
        if count > 1 and site.search_terms and random() < b.search:
            page = int(random() * last)  # never the last page: a result follows
            term_index = site.term_picker.pick(rng)
            term = site.search_terms[term_index]
            results = 0 if term.results == 0 else max(1, int(term.results * (0.6 + 0.8 * random())))
            search_url = site.search_urls[term_index]
            follow[page].append(
                (0.9 + 0.07 * random(), hits.search(search_url, term.term, term.category, results, hits.new_pv_id(rng)))
            )
            searches[page] = search_url
        if site.outlinks and random() < b.outlink:
            page = last if random() < OUTLINK_ON_LAST_PAGE else int(random() * count)
            target = site.outlinks[int(random() * len(site.outlinks))]
            follow[page].append((0.05 + 0.8 * random(), hits.outlink(target, pvs[page])))
        if site.downloads and random() < b.download:
            page = int(random() * count)
            target = site.downloads[int(random() * len(site.downloads))]
            follow[page].append((0.05 + 0.8 * random(), hits.download(target, pvs[page])))
        for events, probability, extra in (
            (site.click_events, b.click_event, (0.4, 0.15)),
            (site.events, b.random_event, (0.3,)),
        ):
            if events and random() < probability:
                number = 1 + sum(random() < p for p in extra)
                for _ in range(number):
                    e = events[int(random() * len(events))]
                    on(
                        int(random() * count),
                        lambda url, pv, e=e: hits.event(url, pv, e.category, e.action, e.name, e.value),
                    )
        if site.content and random() < b.content:
            page = int(random() * count)
            url, pv = pages[page][0], pvs[page]
            blocks = [site.content[int(random() * len(site.content))] for _ in range(1 + (random() < 0.4))]
            for name, piece, target in blocks:
                follow[page].append((0.02 + 0.15 * random(), hits.content(url, pv, name, piece, target)))
            if random() < CONTENT_INTERACTION_PROBABILITY:
                name, piece, target = blocks[0]
                follow[page].append((0.3 + 0.5 * random(), hits.content(url, pv, name, piece, target, "click")))
        if self.any_goal and random() < b.goal:
            goal = site.goals.pick(rng)
            revenue = None if goal.revenue is None else int(goal.revenue * 100)
            page = 1 + int(random() * last) if last else 0
            follow[page].append((0.05 + 0.8 * random(), hits.goal(pages[page][0], pvs[page], goal.idgoal, revenue)))
        if count == 1 and not follow[0]:
            # Non-bounce by definition: one interaction more than the page view.
            events = site.click_events or site.events
            if events:
                e = events[int(random() * len(events))]
                on(0, lambda url, pv: hits.event(url, pv, e.category, e.action, e.name, e.value))
        return searches


@lru_cache(maxsize=16)
def _pages_shown(site: SiteModel, browse_prices: tuple[int, ...]) -> tuple[PageShown, ...]:
    """Each page of ``site`` as shown while browsing, at these browse prices. Built once
    for every stream with the same site and prices (a loader's targets share a catalog
    and preset): the strings read for every page view are one copy, not one per stream
    (16 streams: 1.2 MB less per stream, and ~2 % less time per hit, as more of what
    page views read stays in the CPU caches)."""
    return tuple(
        _shown(url, title, _product_on(site, browse_prices, index))
        for index, (url, title) in enumerate(zip(site.page_urls, site.page_titles, strict=True))
    )


def _product_on(site: SiteModel, browse_prices: tuple[int, ...], index: int | None) -> Params | None:
    """The product view params of catalog page ``index`` (None: not a product page)."""
    if index is None:
        return None
    product_index = site.page_product[index]
    if product_index is None:
        return None
    p = site.products[product_index]
    return product_params(p.sku, p.name, p.category, browse_prices[product_index])


def _shown(url: str, title: str, product: Params | None, head: str | None = None) -> PageShown:
    """A page as shown, with its parameters encoded (what encode_params writes for them);
    ``head``: _url_and_title(url, title) when known."""
    if head is None:
        head = _url_and_title(url, title)
    product_query = "&" + encode_params(product) if product else ""
    return (url, title, product, head, product_query, f"&{encode_pair('urlref', url)}")


def _url_and_title(url: str, title: str) -> str:
    return encode_params({"url": url, "action_name": title})
