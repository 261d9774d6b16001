"""What each kind of funnel step carries: one table for the model, the admin, JSON and the traffic model.

A step is one hit. Its kind decides which of the step's columns mean something; the
others are cleared on validation. Each parameter has three names: the model column, the
key in exported JSON (short, per kind: an event's ``category`` is the column
``event_category``), and the parameter name of ``trafficinator.traffic.funnels.FunnelStep``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class StepKind(models.TextChoices):
    PAGEVIEW = "pageview", "Page view"
    SEARCH = "search", "Site search"
    EVENT = "event", "Event"
    OUTLINK = "outlink", "Outlink"
    DOWNLOAD = "download", "Download"
    GOAL = "goal", "Goal conversion"
    PRODUCT_VIEW = "product_view", "Ecommerce: product view"
    CART_UPDATE = "cart_update", "Ecommerce: cart update"
    ORDER = "order", "Ecommerce: order"
    CONTENT_IMPRESSION = "content_impression", "Content impression"
    CONTENT_INTERACTION = "content_interaction", "Content interaction"


@dataclass(frozen=True)
class Param:
    key: str  # in exported JSON
    column: str  # on FunnelStep
    required: bool = False
    spec_key: str = ""  # in the traffic model's params; defaults to key

    @property
    def traffic_name(self) -> str:
        return self.spec_key or self.key


KIND_PARAMS: dict[str, tuple[Param, ...]] = {
    StepKind.PAGEVIEW: (Param("url", "url", required=True), Param("title", "title")),
    StepKind.SEARCH: (
        Param("keyword", "search_keyword", required=True),
        Param("category", "search_category"),
        Param("count", "search_count"),
    ),
    StepKind.EVENT: (
        Param("category", "event_category", required=True),
        Param("action", "event_action", required=True),
        Param("name", "event_name"),
        Param("value", "event_value"),
    ),
    StepKind.OUTLINK: (Param("url", "url", required=True),),
    StepKind.DOWNLOAD: (Param("url", "url", required=True),),
    StepKind.GOAL: (Param("goal_id", "goal_id", required=True, spec_key="idgoal"), Param("revenue", "revenue")),
    StepKind.PRODUCT_VIEW: (
        Param("sku", "product_sku", required=True),
        Param("name", "product_name", required=True),
        Param("category", "product_category"),
        Param("price", "product_price"),
        Param("url", "url"),
        Param("title", "title"),
    ),
    StepKind.CART_UPDATE: (Param("items", "items", required=True),),
    StepKind.ORDER: (
        Param("items", "items", required=True),
        Param("shipping", "shipping"),
        Param("discount", "discount"),
    ),
    StepKind.CONTENT_IMPRESSION: (
        Param("name", "content_name", required=True),
        Param("piece", "content_piece"),
        Param("target", "content_target"),
    ),
    StepKind.CONTENT_INTERACTION: (
        Param("name", "content_name", required=True),
        Param("piece", "content_piece"),
        Param("target", "content_target"),
        Param("interaction", "content_interaction"),
    ),
}

# Every kind-specific column, in the order the admin shows them.
DETAIL_COLUMNS: tuple[str, ...] = (
    "url",
    "title",
    "search_keyword",
    "search_category",
    "search_count",
    "event_category",
    "event_action",
    "event_name",
    "event_value",
    "goal_id",
    "revenue",
    "product_sku",
    "product_name",
    "product_category",
    "product_price",
    "items",
    "shipping",
    "discount",
    "content_name",
    "content_piece",
    "content_target",
    "content_interaction",
)

# Timing columns every step has, with the same name in JSON.
TIMING_COLUMNS: tuple[str, ...] = ("delay_min", "delay_max", "continue_probability")


def columns_for(kind: str) -> tuple[str, ...]:
    return tuple(param.column for param in KIND_PARAMS.get(kind, ()))


def key_for_column(kind: str, column: str) -> str:
    """The JSON key of a column for this kind (for error paths), or the column itself."""
    for param in KIND_PARAMS.get(kind, ()):
        if param.column == column:
            return param.key
    return column
