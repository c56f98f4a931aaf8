"""Shared fixtures: one database, server and raw client per test module; every answer is leak-checked.

A module describes its database with module-level names, read through ``request.module``:

- ``metadata``: the schema to create and serve (default: the shared ``items`` schema of ``_support``);
- ``DATABASE``: ``"sqlite"`` (default, a file in a temporary directory) or ``"postgresql"`` (``pg_url``);
- ``ROWS``: ``{table: [row, ...]}`` inserted after ``create_all``; ``seed(conn)``: any further seeding;
- ``POLICY``: the server's policy (the app's default when absent);
- ``METHODS``: the ``MethodRegistry`` of named methods to serve (the default registry when absent);
- ``SECRETS``: strings no answer may contain, besides the database URL;
- ``NO_OPEN_TRANSACTIONS``: when true, a test that leaves a server transaction open fails.

A module overrides the ``api_secrets`` fixture when its secrets depend on the engine or server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from tests.servers import RunningServer, running_dbapi

from . import _support
from ._support import RawApi, make_engine


def _metadata(module: ModuleType) -> sa.MetaData:
    return getattr(module, "metadata", _support.metadata)  # type: ignore[no-any-return]


def _is_postgresql(module: ModuleType) -> bool:
    return getattr(module, "DATABASE", "sqlite") == "postgresql"


@pytest.fixture
def raw_api() -> Iterator[Callable[..., RawApi]]:
    """``raw_api(server, secrets)``: a raw client; no answer it got may leak a trace, SQL or a secret."""
    made: list[RawApi] = []

    def make(server: RunningServer, secrets: Iterable[str] = ()) -> RawApi:
        api = RawApi(server, secrets)
        made.append(api)
        return api

    yield make
    for api in made:
        api.assert_no_leaks()


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """The module's database: its ``metadata`` created, ``ROWS`` and ``seed`` inserted."""
    module = request.module
    if _is_postgresql(module):
        url: str | sa.URL = request.getfixturevalue("pg_url")
    else:
        name = module.__name__.rpartition(".")[2].removeprefix("test_")
        url = f"sqlite:///{tmp_path_factory.mktemp(name) / f'{name}.sqlite'}"
    engine = make_engine(url, _metadata(module), getattr(module, "ROWS", None), getattr(module, "seed", None))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, engine: sa.Engine) -> Iterator[RunningServer]:
    """The DB-API serving the module's schema on ``engine``, with its ``POLICY`` if it has one."""
    app_kw: dict[str, Any] = {}
    if hasattr(request.module, "POLICY"):
        app_kw["policy"] = request.module.POLICY
    if hasattr(request.module, "METHODS"):
        app_kw["methods"] = request.module.METHODS
    with running_dbapi(engine, _metadata(request.module), **app_kw) as server:
        yield server


@pytest.fixture
def api_secrets(request: pytest.FixtureRequest, engine: sa.Engine) -> list[str]:
    """What the leak check looks for: the database URL (and name on PostgreSQL), then ``SECRETS``."""
    if _is_postgresql(request.module):
        found = [engine.url.render_as_string(), str(engine.url.database)]
    else:
        found = [str(engine.url)]
    return [*found, *getattr(request.module, "SECRETS", ())]


@pytest.fixture
def api(request: pytest.FixtureRequest, server: RunningServer, api_secrets: list[str],
        raw_api: Callable[..., RawApi]) -> Iterator[RawApi]:
    """A raw client of ``server``; with ``NO_OPEN_TRANSACTIONS`` it also checks none is left open."""
    api = raw_api(server, secrets=api_secrets)
    if not getattr(request.module, "NO_OPEN_TRANSACTIONS", False):
        yield api
        return
    before = server.state.transactions.open_count
    yield api
    opened = server.state.transactions.open_count - before
    assert opened == 0, "the test left a transaction open"
