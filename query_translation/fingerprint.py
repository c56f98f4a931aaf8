"""The fingerprint of a compiled statement, shared by client and server.

The client sends it with each statement; the server compares it with the fingerprint of what it
compiled from the rebuilt structure and refuses to execute on a mismatch. It covers the SQL text
and, for positional paramstyles (where names do not appear in the SQL), the order of the bind
names - so values can never silently land in the wrong placeholder.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = ["MAX_HASHED_DOCUMENT", "document_hash", "sql_fingerprint", "text_fingerprint"]

# the largest document the DB-API keeps decoded under its hash (its decode cache's bound); a larger
# one travels whole every time, without a hash
MAX_HASHED_DOCUMENT = 32 << 10


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


def document_hash(document: Any) -> str | None:
    """The id of a statement document on the wire: SHA-256 of its JSON as orjson writes it
    (None for a document larger than :data:`MAX_HASHED_DOCUMENT`, which is never sent by hash).

    A client sends a statement's document once per DB-API host and process, then only this hash;
    the server verifies it against the document the first time (so no client can make a hash
    name another document) and answers ``unknown_statement`` when it does not know it.
    """
    raw = orjson.dumps(document)
    return hashlib.sha256(raw).hexdigest() if len(raw) <= MAX_HASHED_DOCUMENT else None
