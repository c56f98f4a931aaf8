"""Fixtures of the security suite; the policy tests' schema and servers are in ``_policy_support``."""

from ._policy_support import backend, clean_isolation  # noqa: F401  (fixtures)
