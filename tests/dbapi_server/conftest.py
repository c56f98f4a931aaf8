"""Every raw answer a test received is checked for leaks when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest

from tests.servers import RunningServer

from ._support import RawApi


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
