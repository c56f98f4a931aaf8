"""``create_app()`` from the environment, as ``flask --app dbapi_server run`` and the CLI use it."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.cli import ScriptInfo

from dbapi_server import ConfigError, create_app

METADATA_PATH = "tests.dbapi_server._support:metadata"


def test_flask_cli_finds_the_factory_and_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBAPI_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    monkeypatch.setenv("DBAPI_METADATA", METADATA_PATH)
    monkeypatch.setenv("DBAPI_AUTH", "none")
    app = ScriptInfo(app_import_path="dbapi_server").load_app()  # what `flask --app dbapi_server` does
    try:
        reply = app.test_client().get("/dbapi/v1/info")
        assert reply.status_code == 200
        assert reply.get_json()["dialect"] == "sqlite"
    finally:
        app.extensions["dbapi_server"].close()


@pytest.mark.parametrize(("unset", "match"), [
    ("DBAPI_METADATA", "DBAPI_METADATA"),
    ("DBAPI_DATABASE_URL", "DBAPI_DATABASE_URL"),
])
def test_missing_configuration_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  unset: str, match: str) -> None:
    monkeypatch.setenv("DBAPI_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    monkeypatch.setenv("DBAPI_METADATA", METADATA_PATH)
    monkeypatch.setenv("DBAPI_AUTH", "none")
    monkeypatch.delenv(unset)
    with pytest.raises(ConfigError, match=match):
        create_app()


def test_tokens_need_a_key_unless_auth_is_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DBAPI_AUTH", raising=False)
    monkeypatch.delenv("DBAPI_JWT_KEY_FILE", raising=False)
    monkeypatch.delenv("DBAPI_JWT_SECRET", raising=False)
    with pytest.raises(ConfigError, match="DBAPI_JWT_KEY_FILE"):
        create_app(f"sqlite:///{tmp_path / 'cli.sqlite'}", METADATA_PATH)


def test_a_shared_secret_needs_hs256_named_explicitly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DBAPI_AUTH", raising=False)
    monkeypatch.delenv("DBAPI_JWT_KEY_FILE", raising=False)
    monkeypatch.setenv("DBAPI_JWT_SECRET", "s3cret")
    monkeypatch.delenv("DBAPI_JWT_ALGORITHMS", raising=False)
    with pytest.raises(ConfigError, match="HS256"):
        create_app(f"sqlite:///{tmp_path / 'cli.sqlite'}", METADATA_PATH)


def test_metadata_path_must_name_a_metadata(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a sqlalchemy MetaData"):
        create_app(f"sqlite:///{tmp_path / 'cli.sqlite'}", "tests.dbapi_server._support:make_engine")
