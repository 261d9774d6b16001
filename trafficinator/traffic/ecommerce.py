"""Orders that add up: subtotal + tax + shipping - discount == revenue, to the cent.

All money is integer cents here, so the sums are exact by construction.

How an order is built: the grand total is drawn uniformly inside the profile's order
value range; a shipping option and sometimes a discount are chosen; the subtotal follows
from the tax rate, and the tax is what remains (so it is the rate applied to the
subtotal, within half a cent). The subtotal is then split over the chosen products in
proportion to their catalog prices: the catalog price is a list price and each order
rescales it so that the total lands in the configured range. The visit's product views
and cart updates show the same rescaled prices, so one visit is always consistent.

Product views while browsing show the catalog price scaled once per profile so that an
average basket lands in the middle of the order range (``browse_price``): with the
default catalog (prices in SEK) and the original tool's default range (5-99.99) the
scale is small, and product views still agree with what orders cost on average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from random import Random
from typing import TYPE_CHECKING

from .profile import Profile

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .catalog_items import Product
    from .sampling import Weighted


DISCOUNT_PROBABILITY = 0.15
_QUANTITY_CUMULATIVE = (0.80, 0.95, 1.0)  # 1, 2 or 3 units of a line


@dataclass(slots=True)
class Line:
    sku: str
    name: str
    category: str
    price: int  # cents per unit
    quantity: int


@dataclass(slots=True)
class Order:
    lines: list[Line]
    subtotal: int
    tax: int
    shipping: int
    discount: int

    @property
    def revenue(self) -> int:
        return self.subtotal + self.tax + self.shipping - self.discount


def cents(amount: Decimal) -> int:
    return int((amount * 100).to_integral_value(ROUND_HALF_EVEN))


def money(value: int) -> str:
    """Cents as a decimal string: 1234 -> '12.34'."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value // 100}.{value % 100:02d}"


def items_json(lines: list[Line]) -> str:
    """Matomo's ec_items: [[sku, name, category, price, quantity], ...].

    Prices are written as exact decimal literals, not via float.
    """
    text = _json_text
    return (
        "["
        + ",".join(
            f"[{text(line.sku)},{text(line.name)},{text(line.category)},{money(line.price)},{line.quantity}]"
            for line in lines
        )
        + "]"
    )


# json.dumps of the catalog's few thousand SKUs, names and categories, which every cart
# update writes again (dumps costs more than the rest of a line). Bounded.
_JSON_TEXT_LIMIT = 20_000
_json_texts: dict[str, str] = {}


def _json_text(value: str) -> str:
    found = _json_texts.get(value)
    if found is None:
        if len(_json_texts) >= _JSON_TEXT_LIMIT:
            _json_texts.clear()
        found = _json_texts[value] = json.dumps(value)
    return found


class OrderPlanner:
    """Draws orders for one profile from a catalog's products."""

    def __init__(self, profile: Profile, products: Sequence[Product], product_picker: Weighted) -> None:
        self.products = products
        self.picker = product_picker
        self.low = cents(profile.ecommerce_order_value_min)
        self.high = cents(profile.ecommerce_order_value_max)
        self.items_min = profile.ecommerce_items_min
        self.items_max = profile.ecommerce_items_max
        self.tax_rate = profile.ecommerce_tax_rate
        self.shipping = sorted(cents(s) for s in profile.ecommerce_shipping_options)
        self.list_prices = [cents(p.price) for p in products]
        self.browse_scale = self._browse_scale()

    def __bool__(self) -> bool:
        return bool(self.products)

    def _browse_scale(self) -> float:
        if not self.list_prices:
            return 1.0
        span = self.items_max - self.items_min + 1
        # E[floor(u**1.8 * span)] ~ span / 2.8 - 0.5; mean quantity per line ~ 1.25.
        units = max(1.0, self.items_min + max(0.0, span / 2.8 - 0.5)) * 1.25
        mean_price = sum(self.list_prices) / len(self.list_prices)
        subtotal = (self.low + self.high) / 2 / (1 + float(self.tax_rate))
        return subtotal / (units * mean_price)

    def browse_price(self, index: int) -> int:
        """Cents shown on a product page while browsing."""
        return max(1, round(self.list_prices[index] * self.browse_scale))

    def plan(self, rng: Random) -> tuple[list[int], Order]:
        """Returns (product indexes, order). Lines are in the order products were viewed."""
        random = rng.random
        span = self.items_max - self.items_min + 1
        # Most baskets are small: skew the item count towards the minimum.
        count = min(self.items_min + int(random() ** 1.8 * span), len(self.products))
        chosen: list[int] = []
        for _ in range(count * 4):
            index = self.picker.pick(rng)
            if index not in chosen:
                chosen.append(index)
                if len(chosen) == count:
                    break
        quantities = [1] + [_quantity(random()) for _ in chosen[1:]]

        revenue = self.low + int(random() * (self.high - self.low + 1))
        eligible = [s for s in self.shipping if 2 * s <= revenue]
        shipping = eligible[int(random() * len(eligible))] if eligible else 0
        discount = 0
        if random() < DISCOUNT_PROBABILITY:
            discount = int(revenue * (0.05 + 0.10 * random()))
        taxable = revenue - shipping + discount
        subtotal = int((Decimal(taxable) / (1 + self.tax_rate)).to_integral_value(ROUND_HALF_EVEN))
        tax = taxable - subtotal

        prices = _split(subtotal, [self.list_prices[i] for i in chosen], quantities)
        lines = [
            Line(p.sku, p.name, p.category, price, quantity)
            for p, price, quantity in zip((self.products[i] for i in chosen), prices, quantities, strict=True)
        ]
        return chosen, Order(lines, subtotal, tax, shipping, discount)


def _quantity(u: float) -> int:
    for quantity, bound in enumerate(_QUANTITY_CUMULATIVE, start=1):
        if u < bound:
            return quantity
    return 1


def _split(subtotal: int, list_prices: list[int], quantities: list[int]) -> list[int]:
    """Unit prices (cents, each >= 1) with sum(price * quantity) == subtotal exactly.

    The first line has quantity 1 and absorbs the rounding remainder.
    """
    weight = sum(p * q for p, q in zip(list_prices, quantities, strict=True)) or 1
    prices = [max(1, subtotal * p // weight) for p in list_prices]
    remainder = subtotal - sum(p * q for p, q in zip(prices, quantities, strict=True))
    if prices[0] + remainder >= 1:
        prices[0] += remainder
        return prices
    # Tiny subtotal: one cent for every other unit, the rest on the first line.
    prices = [1] * len(prices)
    prices[0] = subtotal - sum(quantities[1:])
    return prices


def order_from_lines(
    lines: list[Line],
    shipping: int = 0,
    discount: int = 0,
    tax: int | None = None,
    revenue: int | None = None,
) -> Order:
    """An order from explicit lines (funnel steps). With revenue given and tax missing,
    the tax is what makes the sum exact; callers validate that it is not negative."""
    subtotal = sum(line.price * line.quantity for line in lines)
    if tax is None:
        tax = 0 if revenue is None else revenue - subtotal - shipping + discount
    return Order(lines, subtotal, tax, shipping, discount)
