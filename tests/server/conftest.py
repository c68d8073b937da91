"""Fixtures of the server tests: a module-scoped server on the tiny pair and an HTTP client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from serving import API_KEY, running_server, tiny_service

from rstitch_server import StitchService


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[tuple[str, StitchService]]:
    """(base URL, service) of a server on the tiny pair, with ``API_KEY``."""
    service = tiny_service()
    with running_server(service, API_KEY) as base:
        yield base, service
    service.shutdown()


@pytest.fixture
def http(tiny_server: tuple[str, StitchService]) -> Iterator[httpx.Client]:
    base, _ = tiny_server
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client
