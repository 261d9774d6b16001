"""Visitor IP blocks land in their country in a real GeoIP database.

Matomo gives a visit the country its GeoIP database finds for the visitor's IP (``cip``).
The catalog's blocks are checked, address range by address range, against the GeoLite2
country data that the geoip2fast package ships (a test dependency, see README), so a
block that is partly another country's, or not in the database at all, fails here.
"""

from __future__ import annotations

import ipaddress

import geoip2fast
import pytest

from trafficinator.traffic import Catalog


@pytest.fixture(scope="module")
def geoip():
    return geoip2fast.GeoIP2Fast()


def misplaced_addresses(geoip, block: str, country: str) -> dict[str, int]:
    """Addresses of ``block`` the database puts elsewhere (or nowhere: "--"), by country."""
    network = ipaddress.IPv4Network(block)
    address, end = int(network.network_address), int(network.broadcast_address)
    wrong: dict[str, int] = {}
    while address <= end:
        found = geoip.lookup(str(ipaddress.IPv4Address(address)))
        # Step over the whole database network this address is in.
        step_end = int(ipaddress.IPv4Network(found.cidr).broadcast_address) if found.cidr else address
        step_end = min(step_end, end)
        if found.country_code.lower() != country:
            wrong[found.country_code] = wrong.get(found.country_code, 0) + step_end - address + 1
        address = step_end + 1
    return wrong


def test_the_database_is_a_country_database_with_a_date(geoip):
    info = geoip.get_database_info()
    assert "Country" in info["database_content"]
    assert "GeoLite2-Country" in info["source_info"]


def test_every_visitor_ip_block_is_wholly_in_its_country(geoip):
    problems = {}
    for country in Catalog.load_default().countries:
        for block in country.networks:
            wrong = misplaced_addresses(geoip, block, country.code)
            if wrong:
                problems[f"{country.code} {block}"] = wrong
    assert problems == {}


def test_the_check_catches_a_block_that_is_half_another_country(geoip):
    # 174.112.0.0/12 was in the catalog for Canada; half of it is in the United States.
    wrong = misplaced_addresses(geoip, "174.112.0.0/12", "ca")
    assert wrong.get("US", 0) > 2**19 * 0.9
