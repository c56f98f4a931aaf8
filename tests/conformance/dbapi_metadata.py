"""What the corpus's out-of-process DB-API imports (``dbapi-server serve --metadata``).

Every table of the corpus (``models_surface`` adds its own to ``models``' metadata), and SQLite's
foreign keys switched on for every connection, as the corpus's own engines do (``conftest.py``):
SQLite enforces them only when asked, per connection, and the server's engine must ask too.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy as sa

from .models_surface import Base

metadata = Base.metadata


@sa.event.listens_for(sa.Engine, "connect")
def _sqlite_foreign_keys_on(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
