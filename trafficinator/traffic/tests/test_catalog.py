from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from trafficinator.traffic import Catalog, CatalogError, parse_url_list
from trafficinator.traffic.catalog_items import Site, read_site
from trafficinator.traffic.rules import BOT_NETWORKS, bot_word_in

MATOMO_BOT_RANGES = [
    "66.249.64.0/19",
    "66.249.80.0/20",
    "74.125.0.0/16",
    "64.233.160.0/19",
    "157.54.0.0/15",
    "207.46.0.0/16",
    "72.14.192.0/18",
    "209.85.128.0/17",
    "216.239.32.0/19",
    "65.52.0.0/14",
    "40.76.0.0/14",
]


@pytest.fixture(scope="module")
def catalog():
    return Catalog.load_default()


def test_default_url_tree_has_ten_sections_of_five_subsections_of_forty_pages(catalog):
    leaves = [p for p in catalog.pages if p.url.count("/") == 3 and not p.url.endswith("/")]
    assert len(leaves) == 10 * 5 * 40
    sections = Counter(p.url.split("/")[1] for p in leaves)
    assert len(sections) == 10 and set(sections.values()) == {200}
    subsections = Counter("/".join(p.url.split("/")[1:3]) for p in leaves)
    assert len(subsections) == 50 and set(subsections.values()) == {40}


def test_page_titles_are_human_and_follow_the_url_tree(catalog):
    for page in catalog.pages:
        depth = page.url.strip("/").count("/") + 1 if page.url != "/" else 0
        assert page.title.count(" / ") == max(depth - 1, 0), page
        assert "-" not in page.title.split(" / ")[0]
    assert len({p.url for p in catalog.pages}) == len(catalog.pages)


def test_products_are_pages_with_positive_prices(catalog):
    page_urls = {p.url for p in catalog.pages}
    assert len(catalog.products) >= 500
    assert all(p.price > 0 and p.url in page_urls for p in catalog.products)
    assert len({p.sku for p in catalog.products}) == len(catalog.products)


def test_no_shipped_user_agent_looks_like_a_bot(catalog):
    for agent in catalog.user_agents:
        assert bot_word_in(agent.ua) is None, agent.ua
        assert agent.ua.startswith("Mozilla/5.0 (")


def test_every_device_has_browsers_with_matching_resolutions(catalog):
    by_device = {d: [a for a in catalog.user_agents if a.device == d] for d in ("desktop", "mobile", "tablet")}
    assert all(by_device.values())
    for agent in by_device["mobile"]:
        assert all(int(r.split("x")[0]) < 500 for r, _ in agent.resolutions), agent.ua
    for agent in by_device["desktop"]:
        assert all(int(r.split("x")[0]) >= 1280 for r, _ in agent.resolutions), agent.ua


@pytest.mark.parametrize("bot_range", MATOMO_BOT_RANGES)
def test_no_country_network_overlaps_a_matomo_bot_range(catalog, bot_range):
    bot = ipaddress.ip_network(bot_range)
    for country in catalog.countries:
        for cidr in country.networks:
            assert not ipaddress.ip_network(cidr).overlaps(bot), (country.code, cidr)


def test_our_bot_list_contains_every_range_matomo_names():
    for cidr in MATOMO_BOT_RANGES:
        network = ipaddress.ip_network(cidr)
        assert any(network.subnet_of(bot) for bot in BOT_NETWORKS), cidr


def test_catalog_rejects_a_country_network_inside_a_bot_range(catalog):
    with pytest.raises(CatalogError) as error:
        catalog.with_overrides({"countries": [{"code": "us", "languages": ["en-US"], "networks": ["66.249.70.0/24"]}]})
    assert "bots" in str(error.value)


def test_pages_can_be_replaced_from_pasted_text(catalog):
    text = "https://x.test/\n# comment\n\nhttps://x.test/shoes/trail-runner-x | Trail runner X\n"
    custom = catalog.with_overrides({"pages": text, "site": {"url": "https://x.test"}})
    assert [p.url for p in custom.pages] == ["https://x.test/", "https://x.test/shoes/trail-runner-x"]
    assert [p.title for p in custom.pages] == ["Home", "Trail runner X"]
    assert custom.site.url == "https://x.test"
    assert custom.events == catalog.events  # untouched parts stay


def test_extend_mode_keeps_the_default_items(catalog):
    custom = catalog.with_overrides(
        {"events": {"mode": "extend", "items": [{"category": "Video", "action": "Play", "name": "Intro", "value": 3}]}}
    )
    assert len(custom.events) == len(catalog.events) + 1
    assert custom.events[-1].value == 3.0


def test_bad_overrides_name_the_part_and_the_line(catalog):
    with pytest.raises(CatalogError) as error:
        catalog.with_overrides(
            {
                "pages": ["https://ok.test/a", "/fine", "foo"],
                "events": [{"category": "Video"}],
                "nonsense": [],
            }
        )
    messages = error.value.messages()
    assert "pages line 3: 'foo' is not an absolute http(s) URL (or a path starting with '/')" in messages
    assert "events line 1: action is missing" in messages
    assert any(m.startswith("overrides unknown part 'nonsense'") for m in messages)
    assert (
        "pages",
        "line 3: 'foo' is not an absolute http(s) URL (or a path starting with '/')",
    ) in error.value.problems


def test_a_user_agent_with_a_bot_word_is_refused(catalog):
    with pytest.raises(CatalogError) as error:
        catalog.with_overrides(
            {
                "user_agents": [
                    {"device": "desktop", "ua": "Mozilla/5.0 HeadlessChrome/120", "resolutions": ["1920x1080"]}
                ]
            }
        )
    assert "headless" in str(error.value)


def test_replacing_a_required_part_with_nothing_is_an_error(catalog):
    with pytest.raises(CatalogError, match="pages must have at least one item"):
        catalog.with_overrides({"pages": []})


def test_url_list_parser_titles_pages_from_their_path():
    pages = parse_url_list("https://shop.test/shop/trail-shoes/x-2\nhttps://shop.test/about.html | About us")
    assert [p.title for p in pages] == ["Shop / Trail shoes / X 2", "About us"]
    with pytest.raises(CatalogError) as error:
        parse_url_list("https://ok.test/\nftp://nope.test/file\n")
    assert error.value.problems == [
        ("pages", "line 2: 'ftp://nope.test/file' is not an absolute http(s) URL (or a path starting with '/')")
    ]


def test_default_catalog_is_loaded_once(catalog):
    assert Catalog.load_default() is catalog


def test_a_site_given_only_its_url_gets_the_default_paths():
    # Site is a slots dataclass: Site.search_url is a slot descriptor, not the default
    # (read_site once passed the descriptor on and refused the site as "not text").
    site = read_site({"url": "https://shop.example.com/"})
    assert site == Site(url="https://shop.example.com")
    assert site.search_url == "/search?q={keyword}"
