"""Fixtures for adapter tests: one tiny model per family, built once per test session.

`family` is parametrized over every family whose adapter module is importable
(`registry.available_families()`), so a new adapter joins the shared suite by existing.
"""

from __future__ import annotations

import pytest

from spatialmech.models.base import VLMAdapter
from spatialmech.models.registry import available_families

FAMILIES = sorted(available_families())


@pytest.fixture(scope="session", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_adapter(family: str) -> VLMAdapter:
    """`Adapter.tiny()` of the family; shared by all tests of the session (tests must not modify it)."""
    return available_families()[family].tiny()
