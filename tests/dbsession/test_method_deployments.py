"""Named methods when client and DB-API are deployed with different code: refusals the client can
only learn from the server.

The DB-API is ``dbapi-server serve`` in a subprocess importing ``_server_side_methods``; this
process never imports that module, so the two sides really register different things.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from dbsession import (
    BadRequestError,
    DBSession,
    MethodArgumentsError,
    MethodRegistry,
    RemoteArgumentsError,
    RemoteMethodError,
    cli,
    server_method,
)
from query_translation import safe_exceptions
from tests.faults.processes import ServerProcess, token

SERVER_MODULE = "tests.dbsession._server_side_methods"
CLIENT = MethodRegistry()  # what the clients were deployed with


@server_method(name="fail_with_server_only", registry=CLIENT)
def fail_with_server_only(session: Session, what: str) -> None:
    raise AssertionError("runs on the server only")


@server_method(name="take_count", registry=CLIENT)
def take_count(session: Session, count: str) -> int:  # the server's takes an int
    raise AssertionError("runs on the server only")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("deployed")
    server = ServerProcess.start(f"sqlite:///{workdir / 'deployed.sqlite'}", workdir, methods=SERVER_MODULE)
    yield server
    server.stop()


@pytest.fixture
def session(server: ServerProcess) -> Iterator[DBSession]:
    assert SERVER_MODULE not in sys.modules, "this process must not know the server's registrations"
    with DBSession(database_access_isolation=True, database_api_host=server.url, token=token()) as session:
        yield session


def test_arguments_the_servers_signature_refuses_raise_the_documented_error(session: DBSession) -> None:
    with pytest.raises(RemoteArgumentsError) as raised:
        take_count(session, "3")  # fits this side's annotation, so it is sent
    error = raised.value
    assert isinstance(error, BadRequestError) and isinstance(error, MethodArgumentsError)
    assert (error.status, error.code) == (400, "bad_arguments")
    assert str(error).startswith("take_count(): argument 'count' must be int, got str.")
    assert error.error_id and error.error_id in str(error)
    assert session.in_transaction()  # the refusal left the caller's transaction usable


def test_a_class_safe_on_the_server_only_is_a_remote_method_error_with_the_error_id(
        session: DBSession, server: ServerProcess) -> None:
    assert f"{SERVER_MODULE}.ServerOnlyError" not in {f"{c.__module__}.{c.__qualname__}" for c in safe_exceptions()}
    with pytest.raises(RemoteMethodError) as raised:
        fail_with_server_only(session, "boom")
    error = raised.value
    assert (error.status, error.code) == (422, "method_error")
    assert error.error_id and f"(error id {error.error_id}, request id {error.request_id})" in str(error)
    assert "raised ServerOnlyError: ('boom', 7)" in str(error)
    assert error.details == {"type": f"{SERVER_MODULE}.ServerOnlyError", "args": ["boom", 7]}
    session.commit()  # nothing of the failed call is left to get in the way


def test_the_server_lists_its_own_signatures(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_API_TOKEN", token())
    result = CliRunner().invoke(cli.main, ["methods", "--host", server.url])
    assert result.exit_code == 0, result.output
    assert "take_count  v1  take_count(count: int) -> int" in result.output.splitlines()
    assert CLIENT.get("take_count").describe() == "take_count(count: str) -> int"
