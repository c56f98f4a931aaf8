"""Mutations of real request bodies for the mutation fuzzers (``test_fuzz.py``).

A body is a JSON document; :func:`mutate` picks one place in it and drops, retypes, swaps or
grafts (from another seed's body) what is there, renames, renumbers or nests it deeper than any
limit. :func:`serialize` writes the result, nesting included, as the bytes a client would send.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from query_translation.schemas import NODE_SPECS

from . import _fuzzing
from ._fuzzing import Seed

__all__ = ["BROKEN_BODIES", "EXTRA_FIELDS", "Nest", "junk", "mutate", "serialize"]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _set(root: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    _get(root, path[:-1])[path[-1]] = new
    return root


def _drop(root: Any, path: tuple[Any, ...]) -> Any:
    if path:
        del _get(root, path[:-1])[path[-1]]
    return root


_NASTY_VALUES = [
    2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, 1.5e308, -0.0, True, None, "", [], {}, [[[[]]]],
    {"$i": "12x"}, {"$dt": "yesterday"}, {"$dec": "1e999999999"}, {"$dec": "NaN"}, {"$b": "!!"},
    {"$u": "not-a-uuid"}, {"$e": ["os:system", "x"]}, {"$e": ["tests.security._fuzzing:User", "x"]},
    {"$zz": 1}, {"$o": 5}, {"$o": {"a": {"$tu": "x"}}}, {"$td": [1e300, 0, 0]}, {"$td": ["a"]},
    {"$f": "nan"}, {"$f": "zero"}, {"$s": "JSON_NULL"}, {"$s": "__class__"}, {"$set": [1, 2]},
    {"$dtz": ["2024-01-01T00:00:00+00:00", "Mars/Olympus"]}, {"$t": "25:61"}, {"$d": "2024-02-30"},
    {"$mv": "AAAA"}, {"$i": "9" * 5000}, {"t": "table", "name": "fz_users"},
    {"t": "bind", "key": "x"}, {"t": "ref", "@": 10**9}, {"t": "text", "text": "SELECT 1"},
    {"t": "function", "name": "pg_sleep", "args": []}, {"t": "function", "name": "random", "args": []},
    {"t": "column_clause", "name": "1; DROP TABLE fz_users", "literal": True},
    {"t": "table", "name": "sqlite_master"}, {"t": "table", "name": "pg_authid", "schema": "pg_catalog"},
    {"custom": "; DROP TABLE fz_users; --"}, {"anon": "x", "n": 2**70},
]

_json_leaf = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
              | st.text(max_size=20) | st.sampled_from(list(_fuzzing.junk_strings())))
junk = st.one_of(
    st.sampled_from(_NASTY_VALUES),
    st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8),
)
_kinds = st.sampled_from(sorted(NODE_SPECS)) | st.text(max_size=12)


def mutate(data: st.DataObject, root: Any, seeds: list[Seed]) -> Any:
    paths = list(_paths(root))
    path = data.draw(st.sampled_from(paths), label="path")
    target = _get(root, path)
    op = data.draw(st.sampled_from(
        ["drop", "retype", "retype", "swap", "kind", "name", "number", "nest", "graft"]), label="op")
    if op == "drop":
        return _drop(root, path)
    if op == "retype":
        return _set(root, path, copy.deepcopy(data.draw(junk, label="junk")))
    if op == "swap":  # another subtree of the same body, duplicated here
        return _set(root, path, copy.deepcopy(_get(root, data.draw(st.sampled_from(paths), label="from"))))
    if op == "graft":  # a subtree of another statement's body
        other = data.draw(st.sampled_from(seeds), label="seed").payload
        donor = data.draw(st.sampled_from(list(_paths(other))), label="donor")
        return _set(root, path, copy.deepcopy(_get(other, donor)))
    if op == "kind" and isinstance(target, dict) and "t" in target:
        target["t"] = data.draw(_kinds, label="kind")
        return root
    if op == "name" and isinstance(target, str):
        return _set(root, path, data.draw(st.sampled_from(list(_fuzzing.junk_strings())), label="name"))
    if op == "number" and isinstance(target, int | float):
        return _set(root, path, data.draw(st.sampled_from([2**63, 2**64, 10**100, -(2**31), 0.5, 1e308,
                                                           -1, 0, True]), label="number"))
    if op == "nest" and isinstance(target, dict) and "t" in target:
        depth = data.draw(st.sampled_from([20, 60, 99, 101, 400, 3000]), label="depth")
        return _set(root, path, Nest(depth, target))
    return _set(root, path, copy.deepcopy(data.draw(junk, label="junk")))


@dataclass
class Nest:
    """*node* inside *depth* groupings: written as text, deeper than Python's JSON encoder goes.

    Not a dict, so later mutations treat it as a leaf (they may replace it, not reach into it)."""

    depth: int
    node: Any


def serialize(body: Any) -> bytes:
    """JSON text of a (mutated) request body."""
    nests: list[tuple[int, Any]] = []

    def hoist(value: Any) -> Any:
        if isinstance(value, Nest):
            nests.append((value.depth, value.node))
            return f"__NEST_{len(nests) - 1}__"
        if isinstance(value, dict):
            return {k: hoist(v) for k, v in value.items()}
        if isinstance(value, list):
            return [hoist(v) for v in value]
        return value

    text = json.dumps(hoist(body))
    for index, (depth, node) in enumerate(nests):
        inner = json.dumps(hoist(node))
        text = text.replace(f'"__NEST_{index}__"', '{"t": "grouping", "element": ' * depth + inner + "}" * depth)
    return text.encode()


# request fields besides the statement, with values a client might plausibly (or wrongly) send
EXTRA_FIELDS: dict[str, list[Any]] = {
    "stream": [1, 2, 100_000, 100_001, 0], "many": [True, False], "keys": [["id"], ["nope"], [1]],
    "options": [{"preserve_rowcount": True}, {"insertmanyvalues_page_size": 0}, {"isolation_level": "x"}],
    "begin": [True, False], "seq": [0, 2, 2**63], "params": [[], [{}], [{}, {}]], "sql": ["", "0" * 40],
    "txn": ["a" * 128, "a" * 129, "x-y_z"],
}

BROKEN_BODIES = [b"", b"{", b"[]", b"null", b"42", b'"stmt"', b"\xff\xfe\x00", b'{"stmt": NaN, "sql": ""}',
                  b'{"stmt": {}, "stmt": {}}', b"{" * 5000, b'{"a": 1}' * 3, "{\"sql\": \"\u0000\"}".encode()]

