"""A client that takes a row lock through the DB-API, says so, and waits to be killed.

``python -m tests.faults.lock_holder API_HOST TOKEN REF``
"""

from __future__ import annotations

import sys
import time

import sqlalchemy as sa

from dbsession import DBSession
from tests.faults.models import Entry


def main(api_host: str, token: str, ref: str) -> None:
    session = DBSession(database_access_isolation=True, database_api_host=api_host, token=token)
    entry = session.scalars(sa.select(Entry).where(Entry.ref == ref).with_for_update()).one()
    entry.amount = 999
    session.flush()  # the UPDATE ran in the server transaction, which holds the row lock
    print("locked", flush=True)
    time.sleep(600)  # until SIGKILL: no commit, no rollback, no close


if __name__ == "__main__":
    main(*sys.argv[1:4])
