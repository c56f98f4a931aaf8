"""What the DB-API serves for MLflow: its metadata, and SQLite connections with MLflow's REGEXP
function registered (MLflow registers it on its own connections in a connect listener; the
statements run on the DB-API's). MLflow's pragmas come from ``DBAPI_SQLITE_PRAGMAS``."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from tests.integration.mlflow.metadata import metadata

__all__ = ["metadata"]


@event.listens_for(sa.engine.Engine, "connect")
def _mlflow_functions(dbapi_connection: Any, record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        dbapi_connection.create_function("regexp", 2, _regexp)


def _regexp(pattern: str | None, string: str | None) -> bool:
    if string is None or pattern is None:
        return False
    try:
        return re.search(pattern, string) is not None
    except re.error:
        return False
