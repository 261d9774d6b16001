"""Fixtures of the targets tests (the fake Matomo's own tests among them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """One HTTP session for the test's requests to a fake Matomo."""
    with requests.Session() as session:
        yield session
