"""A visit and its hits, as the stream yields them.

A visit's constant Matomo parameters (idsite, rec, apiv, send_image, cid, _id, ua,
lang, res, uadata, uid, cip) live once in ``Visit.params``; each ``Hit.params`` holds
only that hit's own parameters. The full parameter set of a hit is
``visit.params | hit.params`` (``Visit.full_params``). This keeps hits small and lets the
encoder encode the constant part once per visit.

Times are float epoch seconds (UTC) because the sender compares them millions of times;
``*_datetime`` properties give aware datetimes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from .clock import to_datetime


class Hit:
    __slots__ = ("due", "params", "query")

    def __init__(self, due: float, params: dict[str, str], query: str | None = None):
        self.due = due
        self.params = params
        # ``params`` already URL-encoded (what encoding.encode_params gives), or None. The
        # generator sets it, so sending a hit does not encode it again: whoever changes
        # ``params`` afterwards must set it to None (or the new encoding).
        self.query = query

    @property
    def due_datetime(self) -> datetime:
        return to_datetime(self.due)

    @property
    def kind(self) -> str:
        return hit_kind(self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hit) and self.due == other.due and self.params == other.params

    def __repr__(self) -> str:
        return f"Hit({self.due:.3f}, {self.params!r})"


class Visit:
    __slots__ = (
        "channel",
        "cid",
        "device",
        "funnel",
        "hits",
        "index",
        "params",
        "part",
        "persona",
        "query",
        "returning",
        "start",
        "uid",
    )

    def __init__(
        self,
        index: int,
        cid: str,
        uid: str | None,
        start: float,
        persona: str,
        device: str,
        channel: str,
        returning: bool,
        funnel: str | None,
        params: dict[str, str],
        hits: list[Hit],
        part: int = 0,
        query: str | None = None,
    ) -> None:
        self.index = index  # position in its stream (what `skip` counts)
        self.cid = cid  # 16 lowercase hex, sent as cid and _id
        self.uid = uid  # user id of a logged-in visitor, else None
        self.start = start  # epoch seconds of the first hit
        self.persona = persona  # researcher | buyer | casual
        self.device = device  # desktop | mobile | tablet
        self.channel = channel  # direct | search | social | websites | campaign
        self.returning = returning  # visitor from the returning-visitor pool
        self.funnel = funnel  # funnel name, or None for an ordinary visit
        self.params = params  # constant parameters of every hit
        self.hits = hits  # list[Hit], in time order
        self.part = part  # its sub-stream (see stream.live_visits); 0 in a stream of one part
        # ``params`` already encoded (as Hit.query): set by the generator; None = encode
        # them when needed. Whoever changes ``params`` must reset it.
        self.query = query

    @property
    def end(self) -> float:
        return self.hits[-1].due

    @property
    def is_bounce(self) -> bool:
        return len(self.hits) == 1

    def full_params(self, hit: Hit) -> dict[str, str]:
        return {**self.params, **hit.params}

    def iter_full_params(self) -> Iterator[dict[str, str]]:
        for hit in self.hits:
            yield {**self.params, **hit.params}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Visit) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__ if name != "query"
        )

    def __repr__(self) -> str:
        return (
            f"Visit(#{self.index} {self.cid} {self.channel} {self.device} {self.persona} "
            f"{len(self.hits)} hits{' funnel=' + self.funnel if self.funnel else ''})"
        )


def hit_kind(params: dict[str, str]) -> str:
    """What a hit is, from its parameters (Matomo's own precedence)."""
    if params.get("ping") == "1":
        return "ping"
    if "idgoal" in params:
        if params["idgoal"] == "0":
            return "order" if "ec_id" in params else "cart_update"
        return "goal"
    if "search" in params:
        return "search"
    if "link" in params:
        return "outlink"
    if "download" in params:
        return "download"
    if "e_c" in params or "e_a" in params:
        return "event"
    if "c_n" in params:
        return "content_interaction" if "c_i" in params else "content_impression"
    return "pageview"
