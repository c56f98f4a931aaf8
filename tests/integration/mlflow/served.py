"""What the DB-API serves for MLflow: its metadata, and SQLite connections that run with the
pragmas MLflow opens every session with (foreign_keys, busy_timeout, case_sensitive_like) and
its REGEXP function.

The pragmas are set here by a connect listener because this branch's DB-API has no pragma
setting yet (``DBAPI_SQLITE_PRAGMAS`` arrives with the engine options); a deployment sets them
there. The client's own PRAGMA statements are then answered as done
(``dbapi_server.connection_settings``)."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from tests.integration.mlflow.metadata import metadata

__all__ = ["metadata"]


@event.listens_for(sa.engine.Engine, "connect")
def _mlflow_pragmas(dbapi_connection: Any, record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        for pragma in ("foreign_keys = ON", "busy_timeout = 20000", "case_sensitive_like = true"):
            dbapi_connection.execute(f"PRAGMA {pragma}")
        # MLflow's REGEXP (its RLIKE filters), registered where the statements run
        dbapi_connection.create_function("regexp", 2, _regexp)


def _regexp(pattern: str | None, string: str | None) -> bool:
    if string is None or pattern is None:
        return False
    try:
        return re.search(pattern, string) is not None
    except re.error:
        return False
