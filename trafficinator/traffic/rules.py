"""What Matomo silently excludes, so that we never generate it.

Both lists are deliberately wider than Matomo's own: a hit that Matomo answers with
200 but drops is invisible to the user, so a false alarm here is much cheaper than a
miss.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

# Words that make Matomo's DeviceDetector (or its plain substring check) call a user
# agent a bot. Matched case-insensitively as substrings.
BOT_UA_WORDS = (
    "bot",
    "crawl",
    "spider",
    "slurp",
    "monitor",
    "probe",
    "scan",
    "script",
    "check",
    "fetch",
    "uptime",
    "headless",
    "preview",
    "http",
    "curl",
    "wget",
    "python",
    "java/",
    "perl",
    "ruby",
    "node",
    "go-",
    "okhttp",
    "axios",
    "postman",
    "insomnia",
    "phantom",
    "selenium",
    "puppeteer",
    "playwright",
    "lighthouse",
    "pagespeed",
    "pingdom",
    "validator",
    "archive",
    "feed",
    "reader",
    "proxy",
    "scrap",
    "index",
    "search",
    "analy",
    "test",
    "library",
    "client",
    "agent",
    "facebookexternalhit",
    "whatsapp",
    "telegram",
    "discord",
    "slack",
    "skype",
    "embed",
    "google",
    "bing",
    "yandex",
    "baidu",
)

# Matomo's built-in search-bot ranges (core/Tracker/VisitExcluded.php) plus the wider
# blocks they sit in and other big crawler/cloud blocks, plus non-public space.
BOT_NETWORKS = tuple(
    ipaddress.ip_network(cidr, strict=False)
    for cidr in (
        # Google
        "66.249.64.0/19",
        "66.249.80.0/20",
        "66.102.0.0/20",
        "64.233.160.0/19",
        "72.14.192.0/18",
        "74.125.0.0/16",
        "209.85.128.0/17",
        "216.239.32.0/19",
        "64.18.0.0/20",
        "207.126.144.0/20",
        "173.194.0.0/16",
        "108.177.0.0/17",
        "172.217.0.0/16",
        "142.250.0.0/15",
        "216.58.192.0/19",
        "34.0.0.0/9",
        "35.184.0.0/13",
        "35.192.0.0/12",
        "35.208.0.0/12",
        "35.224.0.0/12",
        # Microsoft / Bing
        "64.4.0.0/18",
        "65.52.0.0/14",
        "157.54.0.0/15",
        "157.56.0.0/14",
        "157.60.0.0/16",
        "207.46.0.0/16",
        "207.68.128.0/18",
        "207.68.192.0/20",
        "131.253.16.0/20",
        "40.76.0.0/14",
        "40.74.0.0/15",
        "40.80.0.0/12",
        "13.64.0.0/11",
        "20.0.0.0/8",
        "52.96.0.0/12",
        "104.40.0.0/13",
        # Yahoo
        "72.30.0.0/16",
        "98.136.0.0/14",
        "74.6.0.0/16",
        "68.180.128.0/17",
        # Apple, Yandex, Baidu, Facebook crawlers and the one Chinese bot Matomo names
        "17.0.0.0/8",
        "5.255.192.0/18",
        "77.88.0.0/18",
        "95.108.128.0/17",
        "180.76.0.0/16",
        "123.125.64.0/18",
        "220.181.0.0/16",
        "1.202.218.8/32",
        "31.13.24.0/21",
        "66.220.144.0/20",
        "69.63.176.0/20",
        "69.171.224.0/19",
        "173.252.64.0/18",
        # Big clouds where crawlers and monitors live
        "3.0.0.0/8",
        "18.0.0.0/8",
        "52.0.0.0/8",
        "54.0.0.0/8",
        "104.16.0.0/12",
        # Not public
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
    )
)

_ABSOLUTE_URL = re.compile(r"^https?://[^\s/?#]+\.[^\s/?#]+(?:[/?#]\S*)?$|^https?://localhost(?::\d+)?(?:[/?#]\S*)?$")


@lru_cache(maxsize=4096)
def bot_word_in(user_agent: str) -> str | None:
    """The first bot word found in a user agent, or None (cached: agents repeat)."""
    lowered = user_agent.lower()
    for word in BOT_UA_WORDS:
        if word in lowered:
            return word
    return None


@lru_cache(maxsize=4096)
def is_bot_ip(ip: str) -> bool:
    """True for an address Matomo could exclude, or that is not a public IPv4."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return True
    return any(address in network for network in BOT_NETWORKS)


def network_overlaps_bots(network: ipaddress.IPv4Network) -> bool:
    return any(network.overlaps(bot) for bot in BOT_NETWORKS)


def is_absolute_url(value: str) -> bool:
    """An absolute http(s) URL with a host and no whitespace."""
    return isinstance(value, str) and bool(_ABSOLUTE_URL.match(value))
