"""Real DB-API servers for tests: the Flask app under waitress on a loopback port, real JWTs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dbapi_server import JWTAuthenticator, create_app, mint_token
from dbapi_server.keys import generate_keypair
from dbapi_server.serving import start_background
from dbsession import guard
from dbsession.session import release_api_host

_PRIVATE, _PUBLIC = generate_keypair()


@dataclass
class RunningServer:
    url: str
    app: Any
    token: str

    @property
    def state(self) -> Any:
        return self.app.extensions["dbapi_server"]

    def mint(self, subject: str = "test-worker", **kw: Any) -> str:
        return mint_token(_PRIVATE, subject=subject, **kw)


@contextmanager
def running_dbapi(engine: sa.Engine, metadata: sa.MetaData, **app_kw: Any) -> Iterator[RunningServer]:
    """Serve *engine*'s database over HTTP on 127.0.0.1 for the duration of the block.

    The engine is exempted from the isolation guard explicitly: it is the trusted side.
    """
    guard.exempt(engine)
    app_kw.setdefault("authenticator", JWTAuthenticator(_PUBLIC, algorithms=["EdDSA"]))
    app = create_app(engine=engine, metadata=metadata, **app_kw)
    server = start_background(app)
    try:
        yield RunningServer(server.url, app, mint_token(_PRIVATE, subject="test-worker", ttl=3600))
    finally:
        server.stop()
        app.extensions["dbapi_server"].transactions.close()
        # the client caches a host's handshake and engines; a later server on the same loopback
        # port (another database, another schema) must not inherit them
        release_api_host(server.url)
