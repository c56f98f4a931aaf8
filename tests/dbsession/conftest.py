"""Every dbsession test starts from a clean slate: no isolation env, no configure(), no guard."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

ISOLATION_ENV = ("DATABASE_ACCESS_ISOLATION", "DATABASE_API_HOST", "DATABASE_API_TOKEN",
                 "DATABASE_API_TOKEN_FILE")


@pytest.fixture(autouse=True)
def _clean_isolation(isolation_reset: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ISOLATION_ENV:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(params=["direct", "isolated"])
def mode(request: pytest.FixtureRequest) -> str:
    """The mode under test, for tests that must hold alike in direct and isolation mode."""
    return str(request.param)
