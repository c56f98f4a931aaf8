"""The fingerprint of a compiled statement, shared by client and server.

The client sends it with each statement; the server compares it with the fingerprint of what it
compiled from the rebuilt structure and refuses to execute on a mismatch. It covers the SQL text
and, for positional paramstyles (where names do not appear in the SQL), the order of the bind
names - so values can never silently land in the wrong placeholder.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["sql_fingerprint", "text_fingerprint"]


def sql_fingerprint(compiled: Any) -> str:
    """Hex digest of *compiled*'s SQL and bind order; cached on the compiled object."""
    digest: str | None = getattr(compiled, "_dbs_fingerprint", None)
    if digest is None:
        text = compiled.string
        positions = getattr(compiled, "positiontup", None)
        if positions:
            text = f"{text}\x00{','.join(positions)}"
        digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        compiled._dbs_fingerprint = digest
    return digest


def text_fingerprint(sql: str) -> str:
    """Hex digest of SQL sent as text (DDL, driver SQL): what the server will run."""
    return hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()
