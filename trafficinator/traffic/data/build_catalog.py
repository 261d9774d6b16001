"""Generate pages.json and products.json: the default site's URL tree.

Run once after changing the vocabulary below, and commit the output:

    python trafficinator/traffic/data/build_catalog.py

The site is an outdoor shop with a magazine: 10 sections x 5 subsections x 40 pages,
plus the home page and one index page per section and subsection. Pages of "product"
subsections are products (and appear in products.json with the same URL); the others
are articles whose titles come from patterns x subjects. Output is deterministic.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from random import Random
from typing import Any

HERE = Path(__file__).parent
PAGES_PER_SUBSECTION = 40

BRANDS = [
    "Fjellmark",
    "Nordvik",
    "Alpenlys",
    "Kestrel",
    "Larchwood",
    "Stormhatt",
    "Vidde",
    "Granite Peak",
    "Polaris",
    "Tundra & Co",
]
MODELS = [
    "Aurora",
    "Ridge",
    "Summit",
    "Glacier",
    "Fjord",
    "Birch",
    "Falcon",
    "Nimbus",
    "Cascade",
    "Tempo",
    "Drift",
    "Vista",
    "Ember",
    "Frost",
    "Atlas",
    "Nova",
    "Pioneer",
    "Zephyr",
    "Lynx",
    "Sarek",
]
VARIANTS = ["", " 2", " Pro", " Lite", " GTX", " Mid", " XT", " Air"]

GUIDE_PATTERNS = [
    "{S} for beginners",
    "10 tips for {s}",
    "{S}: a complete guide",
    "Common mistakes in {s}",
    "{S} on a budget",
]
PLACE_PATTERNS = ["{S}: a week on foot", "Getting to {s}", "Where to stay in {s}", "{S} in winter", "{S} with kids"]
HELP_PATTERNS = ["How do I {s}?", "Can I {s}?", "{S}: step by step", "Problems when I {s}", "Why can't I {s}?"]
PEOPLE_PATTERNS = ["Meet {s}", "A day with {s}", "Five questions for {s}", "What I learned from {s}", "Ask {s}"]
STORY_PATTERNS = ["Chasing {s}", "Remembering {s}", "Notes from {s}", "Photos: {s}", "{S}, told by our readers"]
NEWS_PATTERNS = ["New: {s}", "{S} is here", "Behind the scenes of {s}", "{S}: what changes", "Your questions about {s}"]

# (section, [(subsection, kind, product noun | (patterns, subjects), price range)])
SECTIONS: list[tuple[str, list[tuple[Any, ...]]]] = [
    (
        "Hiking",
        [
            ("Boots", "product", "boots", (890, 2990)),
            ("Backpacks", "product", "backpack", (490, 3490)),
            ("Jackets", "product", "jacket", (990, 4990)),
            (
                "Trails",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "coastal paths",
                        "ridge walks",
                        "long-distance trails",
                        "forest trails",
                        "hut-to-hut trekking",
                        "winter hiking",
                        "night hiking",
                        "desert walks",
                    ],
                ),
            ),
            (
                "Skills",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "map reading",
                        "navigation by compass",
                        "first aid outdoors",
                        "packing light",
                        "river crossings",
                        "hiking in the rain",
                        "leave no trace",
                        "pacing on long days",
                    ],
                ),
            ),
        ],
    ),
    (
        "Running",
        [
            ("Road shoes", "product", "road running shoes", (890, 2190)),
            ("Trail shoes", "product", "trail running shoes", (990, 2390)),
            ("Apparel", "product", "running top", (249, 1290)),
            (
                "Training",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "interval training",
                        "marathon training",
                        "base building",
                        "hill repeats",
                        "running in the heat",
                        "recovery runs",
                        "strength for runners",
                        "tempo runs",
                    ],
                ),
            ),
            (
                "Races",
                "article",
                (
                    NEWS_PATTERNS,
                    [
                        "the spring 10K",
                        "the midnight sun marathon",
                        "the forest relay",
                        "the mountain ultra",
                        "the city half marathon",
                        "the kids' race series",
                        "the trail cup",
                        "the winter running league",
                    ],
                ),
            ),
        ],
    ),
    (
        "Cycling",
        [
            ("Road bikes", "product", "road bike", (9990, 39990)),
            ("Mountain bikes", "product", "mountain bike", (8990, 44990)),
            ("Helmets", "product", "helmet", (490, 2490)),
            (
                "Routes",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "the Göta canal",
                        "Gotland",
                        "the Dolomites",
                        "the Danube path",
                        "Mallorca",
                        "the Rhine valley",
                        "the North Sea route",
                        "Lake Constance",
                    ],
                ),
            ),
            (
                "Maintenance",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "chain care",
                        "fixing a flat",
                        "brake tuning",
                        "gear adjustment",
                        "wheel truing",
                        "cleaning your bike",
                        "winter storage",
                        "tubeless setups",
                    ],
                ),
            ),
        ],
    ),
    (
        "Camping",
        [
            ("Tents", "product", "tent", (1490, 8990)),
            ("Sleeping bags", "product", "sleeping bag", (890, 4990)),
            ("Stoves", "product", "stove", (349, 1990)),
            (
                "Campsites",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Lofoten",
                        "the High Coast",
                        "Abisko",
                        "the Lake District",
                        "Sarek",
                        "Jotunheimen",
                        "the Scottish Highlands",
                        "Stockholm archipelago",
                    ],
                ),
            ),
            (
                "Cooking",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "camp cooking",
                        "one-pot meals",
                        "baking over a fire",
                        "meal planning for treks",
                        "cooking at altitude",
                        "dehydrating food",
                        "campfire coffee",
                        "foraging",
                    ],
                ),
            ),
        ],
    ),
    (
        "Climbing",
        [
            ("Shoes", "product", "climbing shoes", (790, 1990)),
            ("Harnesses", "product", "harness", (490, 1490)),
            ("Ropes", "product", "rope", (990, 3490)),
            (
                "Crags",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Bohuslän",
                        "Fontainebleau",
                        "Kalymnos",
                        "the Peak District",
                        "Arco",
                        "Frankenjura",
                        "Margalef",
                        "Åland",
                    ],
                ),
            ),
            (
                "Technique",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "bouldering",
                        "lead climbing",
                        "crack climbing",
                        "belaying",
                        "falling safely",
                        "footwork",
                        "climbing indoors",
                        "multi-pitch routes",
                    ],
                ),
            ),
        ],
    ),
    (
        "Winter",
        [
            ("Skis", "product", "skis", (2990, 8990)),
            ("Snowboards", "product", "snowboard", (2490, 7490)),
            ("Goggles", "product", "goggles", (390, 2190)),
            (
                "Resorts",
                "article",
                (PLACE_PATTERNS, ["Åre", "Hemsedal", "Chamonix", "St. Anton", "Levi", "Niseko", "Sälen", "Zermatt"]),
            ),
            (
                "Avalanche safety",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "avalanche awareness",
                        "transceiver practice",
                        "reading the snowpack",
                        "ski touring",
                        "route choice in winter",
                        "companion rescue",
                        "splitboarding",
                        "off-piste skiing",
                    ],
                ),
            ),
        ],
    ),
    (
        "Water",
        [
            ("Kayaks", "product", "kayak", (4990, 19990)),
            ("Paddleboards", "product", "paddleboard", (2990, 9990)),
            ("Wetsuits", "product", "wetsuit", (990, 4490)),
            (
                "Lakes",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Lake Vänern",
                        "Lake Siljan",
                        "the Glaskogen lakes",
                        "Lake Bled",
                        "Lake Garda",
                        "Lake Saimaa",
                        "Loch Lomond",
                        "Lake Annecy",
                    ],
                ),
            ),
            (
                "Safety",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "cold water paddling",
                        "rescue drills",
                        "sea kayaking",
                        "wild swimming",
                        "paddling at night",
                        "weather on open water",
                        "capsize recovery",
                        "paddling with dogs",
                    ],
                ),
            ),
        ],
    ),
    (
        "Travel",
        [
            (
                "Scandinavia",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Kiruna",
                        "the Faroe Islands",
                        "Tromsø",
                        "Gothenburg",
                        "Bergen",
                        "Helsinki",
                        "Copenhagen",
                        "Reykjavík",
                    ],
                ),
            ),
            (
                "Alps",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Grindelwald",
                        "Innsbruck",
                        "Annecy",
                        "Cortina",
                        "Berchtesgaden",
                        "Zell am See",
                        "Lucerne",
                        "the Aosta valley",
                    ],
                ),
            ),
            (
                "Asia",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Hokkaido",
                        "the Annapurna circuit",
                        "Kyoto",
                        "the Japanese Alps",
                        "Taiwan",
                        "Ladakh",
                        "Bhutan",
                        "Borneo",
                    ],
                ),
            ),
            (
                "Americas",
                "article",
                (
                    PLACE_PATTERNS,
                    [
                        "Patagonia",
                        "Yosemite",
                        "the Canadian Rockies",
                        "Banff",
                        "the Appalachians",
                        "Torres del Paine",
                        "Colorado",
                        "the Pacific Northwest",
                    ],
                ),
            ),
            (
                "Packing",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "packing for a long trip",
                        "carry-on travel",
                        "travel with kids",
                        "travelling with a bike",
                        "layering",
                        "travel insurance",
                        "train travel",
                        "flying with gear",
                    ],
                ),
            ),
        ],
    ),
    (
        "Journal",
        [
            (
                "Interviews",
                "article",
                (
                    PEOPLE_PATTERNS,
                    [
                        "a mountain guide",
                        "an ultra runner",
                        "a ski patroller",
                        "a kayak instructor",
                        "a bike mechanic",
                        "a hut warden",
                        "a trail builder",
                        "a climbing coach",
                    ],
                ),
            ),
            (
                "Stories",
                "article",
                (
                    STORY_PATTERNS,
                    [
                        "the northern lights",
                        "a storm on the fjord",
                        "our first summit",
                        "a lost trail",
                        "a night under the stars",
                        "the longest day",
                        "a winter crossing",
                        "the last ferry",
                    ],
                ),
            ),
            (
                "News",
                "article",
                (
                    NEWS_PATTERNS,
                    [
                        "our repair service",
                        "the membership programme",
                        "the spring collection",
                        "the rental shop",
                        "our new store",
                        "the gear swap",
                        "the outdoor school",
                        "the recycling scheme",
                    ],
                ),
            ),
            (
                "Reviews",
                "article",
                (
                    GUIDE_PATTERNS,
                    [
                        "budget tents",
                        "lightweight stoves",
                        "waterproof jackets",
                        "headlamps",
                        "trekking poles",
                        "GPS watches",
                        "water filters",
                        "down jackets",
                    ],
                ),
            ),
            (
                "Events",
                "article",
                (
                    NEWS_PATTERNS,
                    [
                        "the film festival",
                        "the autumn meet-up",
                        "the photo contest",
                        "the climbing weekend",
                        "the paddling camp",
                        "the trail clean-up",
                        "the ski test days",
                        "the store opening",
                    ],
                ),
            ),
        ],
    ),
    (
        "Help",
        [
            (
                "Orders",
                "article",
                (
                    HELP_PATTERNS,
                    [
                        "cancel an order",
                        "change my order",
                        "pay by invoice",
                        "use a gift card",
                        "find my order number",
                        "order by phone",
                        "split a payment",
                        "add a discount code",
                    ],
                ),
            ),
            (
                "Returns",
                "article",
                (
                    HELP_PATTERNS,
                    [
                        "return an item",
                        "exchange a size",
                        "return a gift",
                        "get a refund",
                        "print a return label",
                        "return a bike",
                        "return worn boots",
                        "track my return",
                    ],
                ),
            ),
            (
                "Delivery",
                "article",
                (
                    HELP_PATTERNS,
                    [
                        "track a parcel",
                        "change my delivery address",
                        "collect in store",
                        "get express delivery",
                        "ship abroad",
                        "choose a delivery time",
                        "deliver to a locker",
                        "reschedule a delivery",
                    ],
                ),
            ),
            (
                "Sizing",
                "article",
                (
                    HELP_PATTERNS,
                    [
                        "measure my feet",
                        "choose a jacket size",
                        "fit a backpack",
                        "size a bike frame",
                        "pick a ski length",
                        "size a wetsuit",
                        "choose a harness size",
                        "fit a helmet",
                    ],
                ),
            ),
            (
                "Warranty",
                "article",
                (
                    HELP_PATTERNS,
                    [
                        "claim the warranty",
                        "repair a zip",
                        "register my product",
                        "report a fault",
                        "get a spare part",
                        "extend the warranty",
                        "send gear for repair",
                        "check my warranty",
                    ],
                ),
            ),
        ],
    ),
]


def slug(text: str) -> str:
    text = text.lower().replace("&", "and")
    for a, b in (("å", "a"), ("ä", "a"), ("ö", "o"), ("é", "e"), ("í", "i"), ("ü", "u")):
        text = text.replace(a, b)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def article_titles(patterns: list[str], subjects: list[str], rng: Random) -> list[str]:
    titles = [p.replace("{S}", capitalise(s)).replace("{s}", s) for s in subjects for p in patterns]
    rng.shuffle(titles)
    return titles[:PAGES_PER_SUBSECTION]


def product_names(noun: str, rng: Random) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < PAGES_PER_SUBSECTION:
        name = f"{rng.choice(BRANDS)} {rng.choice(MODELS)}{rng.choice(VARIANTS)} {noun}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def price(low: int, high: int, rng: Random) -> str:
    # Shop prices look like 1490 or 1489 crowns.
    rounded = int(rng.uniform(low, high) / 10) * 10 - (1 if rng.random() < 0.6 else 0)
    return str(Decimal(min(max(rounded, low), high)).quantize(Decimal("0.01")))


def build() -> tuple[list[dict], list[dict]]:
    pages = [{"url": "/", "title": "Home"}]
    products = []
    for section, subsections in SECTIONS:
        section_slug = slug(section)
        pages.append({"url": f"/{section_slug}/", "title": section})
        for entry in subsections:
            name, kind = entry[0], entry[1]
            sub_slug = slug(name)
            base = f"/{section_slug}/{sub_slug}/"
            pages.append({"url": base, "title": f"{section} / {name}"})
            rng = Random(f"{section}/{name}")
            if kind == "product":
                noun, (low, high) = entry[2], entry[3]
                for number, product in enumerate(product_names(noun, rng), start=1):
                    url = f"{base}{slug(product)}"
                    pages.append({"url": url, "title": f"{section} / {name} / {product}"})
                    sku = f"{section_slug[:3].upper()}-{slug(name)[:3].upper()}-{number:03d}"
                    products.append(
                        {
                            "sku": sku,
                            "name": product,
                            "category": f"{section} {name.lower()}",
                            "price": price(low, high, rng),
                            "url": url,
                        }
                    )
            else:
                patterns, subjects = entry[2]
                for title in article_titles(patterns, subjects, rng):
                    pages.append({"url": f"{base}{slug(title)}", "title": f"{section} / {name} / {title}"})
    return pages, products


def main() -> None:
    pages, products = build()
    urls = [p["url"] for p in pages]
    assert len(urls) == len(set(urls)), "duplicate page URLs"
    for name, items in (("pages.json", pages), ("products.json", products)):
        # One item per line: small files and readable diffs.
        lines = ",\n".join(json.dumps(item, ensure_ascii=False) for item in items)
        (HERE / name).write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    print(f"{len(pages)} pages, {len(products)} products")


if __name__ == "__main__":
    main()
