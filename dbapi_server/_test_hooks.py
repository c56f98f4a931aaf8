"""Fault-injection hooks for the test suite, honoured only when explicitly enabled.

``DBAPI_TEST_HOOKS=enable`` must be set (with ``dbapi-server serve``, which records its process id)
before any hook is honoured; otherwise a hook variable is ignored with a warning, so a stray
variable can never take a production instance down.

``DBAPI_TEST_HOOK_KILL_AFTER_COMMIT=<subject>``
    After COMMIT of a transaction owned by token subject *subject* returns, and before its answer
    is written, the instance kills itself with SIGKILL (its ``dbapi-server serve`` process, and so
    granian's worker with it): the crash between COMMIT and the answer, where only the commit
    outcome table knows what happened (``tests/service/test_crash_after_commit.py``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import ServerState
    from .transactions import Transaction

__all__ = ["SERVE_PID", "install_test_hooks"]

log = logging.getLogger("dbapi_server.test_hooks")

SERVE_PID = "DBAPI_SERVE_PID"  # set by ``dbapi-server serve`` for its own process (inherited by workers)
_KILL_AFTER_COMMIT = "DBAPI_TEST_HOOK_KILL_AFTER_COMMIT"


def install_test_hooks(state: ServerState, environ: Mapping[str, str]) -> None:
    subject = environ.get(_KILL_AFTER_COMMIT)
    if not subject:
        return
    if environ.get("DBAPI_TEST_HOOKS") != "enable":
        log.warning("%s is set but ignored: test hooks are not enabled (DBAPI_TEST_HOOKS=enable)",
                    _KILL_AFTER_COMMIT)
        return
    serve_pid = environ.get(SERVE_PID)
    if not serve_pid or int(serve_pid) not in (os.getpid(), os.getppid()):
        log.warning("%s is ignored: it is honoured only under dbapi-server serve", _KILL_AFTER_COMMIT)
        return
    instance = int(serve_pid)

    def kill_after_commit(txn: Transaction) -> None:
        if txn.owner != subject:
            return
        log.warning("test hook: killing this instance after the commit of %s", txn.id)
        if instance != os.getpid():
            os.kill(instance, signal.SIGKILL)  # granian's main process: no respawned worker
        os.kill(os.getpid(), signal.SIGKILL)

    log.warning("TEST HOOK ENABLED: this instance kills itself after committing a transaction of %r", subject)
    state.transactions.after_commit = kill_after_commit
