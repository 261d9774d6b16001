"""Parameter dicts for each kind of hit (page view, search, event, order, ...).

Only per-hit parameters are built here; the visit's constant ones (idsite, cid, ua, ...)
are added once per visit by the encoder. ``rand``, ``h``, ``m``, ``s`` are added when
the hit gets its time (generator.py).
"""

from __future__ import annotations

from math import exp
from random import Random
from statistics import NormalDist
from typing import TYPE_CHECKING

from .ecommerce import Line, Order, items_json, money
from .sampling import derive_seed, pv_id

if TYPE_CHECKING:
    from .site_model import SiteModel


# Page timings (ms): (median, spread) per metric, log-normal. Phones are slower.
_PERFORMANCE = {
    "pf_net": (20, 0.9),
    "pf_srv": (150, 0.6),
    "pf_tfr": (40, 0.7),
    "pf_dm1": (600, 0.5),
    "pf_dm2": (300, 0.6),
    "pf_onl": (15, 0.8),
}
_DEVICE_SLOWDOWN = {"desktop": 1.0, "mobile": 1.6, "tablet": 1.3}
_QUANTILES = 256
ORDER_TAG_MASK = (1 << 48) - 1
# A hit as a visit builder makes it: (seconds after the visit start, params, the params
# already encoded or None when the generator is to encode them).
Entry = tuple[float, dict[str, str], str | None]


def _performance_tables() -> dict[str, list[tuple[str, list[str]]]]:
    """Per device, 256 precomputed quantiles per metric: one getrandbits per value."""
    normal = NormalDist()
    z = [normal.inv_cdf((i + 0.5) / _QUANTILES) for i in range(_QUANTILES)]
    tables = {}
    for device, slowdown in _DEVICE_SLOWDOWN.items():
        metric_tables = []
        for name, (median, spread) in _PERFORMANCE.items():
            factor = slowdown if name in ("pf_net", "pf_srv", "pf_tfr", "pf_dm1", "pf_dm2") else 1.0
            metric_tables.append((name, [str(max(0, round(median * factor * exp(spread * q)))) for q in z]))
        tables[device] = metric_tables
    return tables


PERFORMANCE_TABLES = _performance_tables()
# Per device, the six metric tables in the order of _PERFORMANCE (HitFactory.pageview
# names them in that order in one dict display).
_PERFORMANCE_ROWS = {device: tuple(table for _, table in metrics) for device, metrics in PERFORMANCE_TABLES.items()}
assert tuple(_PERFORMANCE) == ("pf_net", "pf_srv", "pf_tfr", "pf_dm1", "pf_dm2", "pf_onl")


def _number(value: float) -> str:
    """A plain decimal number (never exponent notation): 2400.0 -> '2400'."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def product_params(sku: str, name: str, category: str, price: int | None) -> dict[str, str]:
    """The product view parameters of a page showing a product (price in cents)."""
    params = {"_pks": sku, "_pkn": name}
    if category:
        params["_pkc"] = category
    if price is not None:
        params["_pkp"] = money(price)
    return params


class HitFactory:
    def __init__(
        self, site: SiteModel, page_performance: bool, order_id_prefix: str, order_tag_seed: tuple[object, ...]
    ) -> None:
        self.site = site
        self.page_performance = page_performance
        self.order_prefix = f"{order_id_prefix}-" if order_id_prefix else ""
        self.reset_orders(order_tag_seed)

    def reset_orders(self, order_tag_seed: tuple[object, ...]) -> None:
        """Number orders from 1 again under a tag from ``order_tag_seed``: a tag from the
        seed and stream keeps two streams with one prefix apart. 48 bits: Matomo ignores
        an order whose id its site already has, and the streams under one prefix are many
        (a live run's 64 sub-streams per target, a backfill's days); with the 24 bits
        this had, two of a year's 365 days shared a tag once in 250 plans, and then
        their orders numbered alike were lost (with 48, one in four billion)."""
        self.order_tag = f"{derive_seed('orders', *order_tag_seed) & ORDER_TAG_MASK:012x}"
        self.order_count = 0

    def pageview(self, rng: Random, url: str, title: str, device: str, pv: str) -> dict[str, str]:
        if not self.page_performance:
            return {"url": url, "action_name": title, "pv_id": pv}
        # One dict display (the most common hit): the timings are drawn in key order.
        net, srv, tfr, dm1, dm2, onl = _PERFORMANCE_ROWS[device]
        getrandbits = rng.getrandbits
        return {
            "url": url,
            "action_name": title,
            "pv_id": pv,
            "pf_net": net[getrandbits(8)],
            "pf_srv": srv[getrandbits(8)],
            "pf_tfr": tfr[getrandbits(8)],
            "pf_dm1": dm1[getrandbits(8)],
            "pf_dm2": dm2[getrandbits(8)],
            "pf_onl": onl[getrandbits(8)],
        }

    def pageview_encoded(
        self, rng: Random, url: str, title: str, head: str, device: str, pv: str
    ) -> tuple[dict[str, str], str]:
        """pageview() and its encoding (encode_params of it), from ``head``, the encoding
        of its url and action_name (built once per page): the hot path of a stream."""
        if not self.page_performance:
            return {"url": url, "action_name": title, "pv_id": pv}, f"{head}&pv_id={pv}"
        net, srv, tfr, dm1, dm2, onl = _PERFORMANCE_ROWS[device]
        getrandbits = rng.getrandbits
        # Drawn in the order pageview() draws them; timings and pv_id need no quoting.
        timings = (
            net[getrandbits(8)],
            srv[getrandbits(8)],
            tfr[getrandbits(8)],
            dm1[getrandbits(8)],
            dm2[getrandbits(8)],
            onl[getrandbits(8)],
        )
        pf_net, pf_srv, pf_tfr, pf_dm1, pf_dm2, pf_onl = timings
        params = {
            "url": url,
            "action_name": title,
            "pv_id": pv,
            "pf_net": pf_net,
            "pf_srv": pf_srv,
            "pf_tfr": pf_tfr,
            "pf_dm1": pf_dm1,
            "pf_dm2": pf_dm2,
            "pf_onl": pf_onl,
        }
        query = (
            f"{head}&pv_id={pv}&pf_net={pf_net}&pf_srv={pf_srv}&pf_tfr={pf_tfr}"
            f"&pf_dm1={pf_dm1}&pf_dm2={pf_dm2}&pf_onl={pf_onl}"
        )
        return params, query

    @staticmethod
    def add_product(params: dict[str, str], sku: str, name: str, category: str, price: int | None) -> None:
        params.update(product_params(sku, name, category, price))

    @staticmethod
    def search(url: str, keyword: str, category: str, count: int, pv: str) -> dict[str, str]:
        params = {"url": url, "search": keyword, "search_count": str(count), "pv_id": pv}
        if category:
            params["search_cat"] = category
        return params

    @staticmethod
    def event(url: str, pv: str, category: str, action: str, name: str, value: float | None) -> dict[str, str]:
        params = {"url": url, "pv_id": pv, "e_c": category, "e_a": action}
        if name:
            params["e_n"] = name
        if value is not None:
            params["e_v"] = _number(value)
        return params

    @staticmethod
    def outlink(target: str, pv: str) -> dict[str, str]:
        return {"link": target, "url": target, "pv_id": pv}

    @staticmethod
    def download(target: str, pv: str) -> dict[str, str]:
        return {"download": target, "url": target, "pv_id": pv}

    @staticmethod
    def goal(url: str, pv: str, idgoal: int, revenue: int | None) -> dict[str, str]:
        params = {"url": url, "pv_id": pv, "idgoal": str(idgoal)}
        if revenue is not None:
            params["revenue"] = money(revenue)
        return params

    @staticmethod
    def content(url: str, pv: str, name: str, piece: str, target: str, interaction: str = "") -> dict[str, str]:
        params = {"url": url, "pv_id": pv, "c_n": name}
        if piece:
            params["c_p"] = piece
        if target:
            params["c_t"] = target
        if interaction:
            params["c_i"] = interaction
        return params

    @staticmethod
    def cart_update(url: str, pv: str, lines: list[Line]) -> dict[str, str]:
        total = sum(line.price * line.quantity for line in lines)
        return {"url": url, "pv_id": pv, "idgoal": "0", "revenue": money(total), "ec_items": items_json(lines)}

    def order(self, url: str, pv: str, order: Order) -> dict[str, str]:
        self.order_count += 1
        return {
            "url": url,
            "pv_id": pv,
            "idgoal": "0",
            "ec_id": f"{self.order_prefix}{self.order_tag}-{self.order_count}",
            "revenue": money(order.revenue),
            "ec_st": money(order.subtotal),
            "ec_tx": money(order.tax),
            "ec_sh": money(order.shipping),
            "ec_dt": money(order.discount),
            "ec_items": items_json(order.lines),
        }

    @staticmethod
    def ping(url: str, pv: str) -> dict[str, str]:
        return {"ping": "1", "url": url, "pv_id": pv}

    new_pv_id = staticmethod(pv_id)
