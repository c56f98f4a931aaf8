"""The policy file: TOML (stdlib ``tomllib``) -> :class:`~dbapi_server.policy.Policy`.

TOML because it is in the standard library (no new dependency), has comments, and its nested
tables read naturally as ``[roles.worker.tables.task_instance]``. Every key is checked: an unknown
key, a wrong type or (at server start, against the metadata) an unknown table or column is a
:class:`PolicyError` naming the entry, e.g. ``roles.worker.tables.xcom.raed: unknown key``.
The format is documented in ``docs/security.md``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from os import PathLike
from typing import Any

from .policy import DEFAULT_FUNCTIONS, Limits, Policy, PolicyError, RolePolicy, TableGrant

__all__ = ["load_file", "policy_from_dict"]

_TOP = {"preset", "limits", "roles", "extra_tables"}
_ROLE = {"tables", "functions", "extra_functions", "methods", "raw_sql", "ddl", "limits"}
_TABLE = {"read", "insert", "update", "delete", "row_filter"}
_LIMITS: dict[str, Any] = {"max_depth": int, "max_body_bytes": int, "max_rows": int, "statement_timeout": (int, float),
                           "max_nodes": int, "max_columns": int, "max_params": int}


def load_file(path: str | PathLike[str]) -> Policy:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise PolicyError(f"Cannot read the policy file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"The policy file {path} is not valid TOML: {exc}.") from None
    return policy_from_dict(data)


def _check_keys(data: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PolicyError(f"{where}: expected a table, got {type(data).__name__}.")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}: unknown key (expected one of {', '.join(sorted(allowed))}).")
    return data


def _limits(data: Any, where: str) -> Limits:
    given = _check_keys(data, set(_LIMITS), where)
    values: dict[str, Any] = {}
    value: Any
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, _LIMITS[name]) or value <= 0:
            raise PolicyError(f"{where}.{name}: must be a positive number, not {value!r}.")
        values[name] = float(value) if name == "statement_timeout" else value
    return Limits(**values)


def _flag(data: Mapping[str, Any], name: str, where: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}.{name}: must be true or false, not {value!r}.")
    return value


def _name_list(value: Any, where: str, *, fold: bool = True) -> frozenset[str] | None:
    if value == "*":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: must be \"*\" or a list of names.")
    return frozenset(v.lower() if fold else v for v in value)  # SQL function names fold case


def _role(data: Any, where: str) -> RolePolicy:
    data = _check_keys(data, _ROLE, where)
    functions: frozenset[str] | None = DEFAULT_FUNCTIONS
    if "functions" in data and data["functions"] != "default":
        functions = _name_list(data["functions"], f"{where}.functions")
    if "extra_functions" in data:
        extra = _name_list(data["extra_functions"], f"{where}.extra_functions")
        functions = None if functions is None or extra is None else functions | extra
    methods = _name_list(data["methods"], f"{where}.methods", fold=False) if "methods" in data else frozenset()
    tables = _check_keys(data.get("tables", {}), set(data.get("tables", {})), f"{where}.tables")
    grants = {name: _table(grant, f"{where}.tables.{name}") for name, grant in tables.items()}
    return RolePolicy(tables=grants, functions=functions, methods=methods,
                      raw_sql=_flag(data, "raw_sql", where), ddl=_flag(data, "ddl", where),
                      limits=_limits(data.get("limits", {}), f"{where}.limits"))


def _table(data: Any, where: str) -> TableGrant:
    data = _check_keys(data, _TABLE, where)
    row_filter = data.get("row_filter", {})
    if not isinstance(row_filter, Mapping):
        raise PolicyError(f"{where}.row_filter: must be a table of column = \"claim\" pairs.")
    try:
        return TableGrant(read=data.get("read"), insert=data.get("insert"), update=data.get("update"),
                          delete=data.get("delete", False), row_filter=row_filter)
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc}") from None


def policy_from_dict(data: Mapping[str, Any]) -> Policy:
    data = _check_keys(data, _TOP, "policy")
    roles_data = data.get("roles", {})
    if not isinstance(roles_data, Mapping):
        raise PolicyError("roles: expected a table of roles.")
    roles = {name: _role(role, f"roles.{name}") for name, role in roles_data.items()}
    limits = _limits(data.get("limits", {}), "limits")
    extra = data.get("extra_tables", [])
    if not isinstance(extra, list) or not all(isinstance(v, str) and v for v in extra):
        raise PolicyError("extra_tables: must be a list of table names (\"name\" or \"schema.name\").")
    preset = data.get("preset")
    if preset is None:
        return Policy(roles, limits=limits, extra_tables=extra)
    presets = {"open": Policy.open, "testing": Policy.for_testing}
    if preset not in presets:
        raise PolicyError(f"preset: must be \"open\" or \"testing\", not {preset!r}.")
    return Policy(roles, limits=limits, fallback=presets[preset]().fallback, extra_tables=extra)
