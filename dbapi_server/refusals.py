"""The typed refusals a policy answers with.

Each names what was refused in a field of the error envelope, never by echoing SQL::

    {"error": {"code": "policy_violation", "message": "...", "table": "dag_code", ...}}
    {"error": {"code": "limit_exceeded", "message": "...", "limit": "result_rows", "max": 1000}}

``PolicyViolation`` answers 403. ``LimitExceeded`` answers 400 (statement depth) or 413 (request
body, result rows). Inside a transaction the envelope also says ``"txn_state": "open"``.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError

__all__ = ["LimitExceeded", "PolicyViolation"]


class PolicyViolation(APIError):
    """403: the caller's role may not do this; ``extra`` names the table/column/function/method."""

    status = 403
    code = "policy_violation"


class LimitExceeded(APIError):
    """400/413: a statement, body or result beyond the role's limit; ``extra['limit']`` names it."""

    code = "limit_exceeded"

    def __init__(self, message: str, *, limit: str, maximum: Any, status: int = 413) -> None:
        super().__init__(message, status=status, limit=limit, max=maximum)
