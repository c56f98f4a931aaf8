"""How much work a statement document is, measured before anything expensive runs.

A document is a tree whose nodes may reference earlier ones (``{"t": "ref", "@": k}``): the
decoder builds each referenced node once, but the statement it builds renders - and is scanned
and compiled - as the *expanded* tree. References can nest: a chain of binary nodes whose left and
right both reference the previous one doubles at every level, so 4 KB of JSON can stand for 2**60
nodes of SQL. :func:`measure_document` counts that expansion in one linear pass (each referenced
node's size computed once, memoized), so a server can refuse such a document by its size before
validating, decoding, checking or compiling it.

Counted as what SQL renders: a reference to a table or a CTE, or one in a naming position (a
column's ``from``, ``correlate``, ``FOR UPDATE OF``...), renders as a name and counts 1; any other
reference counts the whole node it stands for, every time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DocumentSize", "count_values", "measure_document"]

# fields whose node renders as a name only (the node itself renders once, elsewhere)
_NAMING_FIELDS = frozenset({"from", "correlate", "correlate_except", "restates", "alias_of", "of"})
# node types that render as their name wherever they are referenced
_NAMED_NODES = frozenset({"table", "cte"})
# lists whose length is how many columns one SELECT list, RETURNING or VALUES row has
_COLUMN_LISTS = frozenset({"cols", "returning", "values", "pairs", "seq", "columns", "return_defaults_cols",
                           "supplemental_returning"})


@dataclass(frozen=True)
class DocumentSize:
    """The size of one statement document."""

    nodes: int  # nodes as sent
    expanded: int  # nodes of the statement once every reference is expanded (what SQL renders)
    columns: int  # the widest select list, RETURNING list or VALUES row


def measure_document(document: Any) -> DocumentSize:
    """The size of a wire document (``{"version": ..., "statement": ...}``) or of a bare node.

    Linear in the document's length whatever its references; never raises on a malformed
    document (dangling and cyclic references count 1: the decoder refuses them later).
    """
    statement = document.get("statement", document) if isinstance(document, Mapping) else document
    definitions: dict[Any, Mapping[str, Any]] = {}
    nodes = columns = 0
    stack: list[Any] = [statement]
    while stack:  # first pass: definitions by id, nodes as sent, the widest column list
        value = stack.pop()
        if isinstance(value, Mapping):
            if "t" in value:
                nodes += 1
                if "@" in value and _kind(value) != "ref":
                    definitions.setdefault(_key(value["@"]), value)
            for name, child in value.items():
                if name in _COLUMN_LISTS and isinstance(child, list):
                    columns = max(columns, len(child))
                if isinstance(child, (Mapping, list)):
                    stack.append(child)
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, (Mapping, list)))
    return DocumentSize(nodes=nodes, expanded=_expanded(statement, definitions), columns=columns)


def _kind(node: Mapping[str, Any]) -> str | None:
    """A node's type, if it is a string (anything else is malformed: the validation says so)."""
    kind = node.get("t")
    return kind if isinstance(kind, str) else None


def _key(ref: Any) -> Any:
    """A hashable form of a reference id (the decoder refuses what is not an int)."""
    return ref if isinstance(ref, (int, str)) else repr(ref)


def _children(value: Any, field: str | None) -> Iterator[tuple[str | None, Any]]:
    if isinstance(value, Mapping):
        return iter(value.items())
    return ((field, item) for item in value)  # a list's items sit in the list's field


def _expanded(root: Any, definitions: Mapping[Any, Mapping[str, Any]]) -> int:
    """Nodes of *root* with references expanded; each definition's size computed once."""
    memo: dict[Any, int] = {}
    active: set[Any] = set()  # definitions being sized: a reference back to one is a cycle
    # frames: [children, total so far, definition id or None]
    frames: list[list[Any]] = []

    def enter(value: Any, field: str | None) -> int | None:
        """The size of *value* if known now; otherwise a frame is pushed and None returned."""
        if not isinstance(value, (Mapping, list)):
            return 0
        key = None
        if isinstance(value, Mapping):
            kind = _kind(value)
            if kind == "ref":
                key = _key(value.get("@"))
                target = definitions.get(key)
                if target is None or key in active or field in _NAMING_FIELDS or _kind(target) in _NAMED_NODES:
                    return 1
                if key in memo:
                    return memo[key]
                value = target
            elif "@" in value and "t" in value:
                key = _key(value["@"])
                if key in memo:
                    return memo[key]
                if key in active:
                    return 1
            if key is not None:
                active.add(key)
            frames.append([_children(value, field), 1 if "t" in value else 0, key])
            return None
        frames.append([_children(value, field), 0, None])
        return None

    result = enter(root, None)
    if result is not None:
        return result
    while frames:
        frame = frames[-1]
        for field, child in frame[0]:
            size = enter(child, field)
            if size is None:
                break  # a frame for the child was pushed: continue there
            frame[1] += size
        else:
            frames.pop()
            _, total, key = frame
            if key is not None:
                memo[key] = total
                active.discard(key)
            if not frames:
                return int(total)
            frames[-1][1] += total
    return 0


def count_values(params: Any) -> int:
    """How many values a request's parameter sets hold (items of lists and mappings, nested)."""
    count = 0
    stack = [params]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            count += len(value)
            stack.extend(v for v in value.values() if isinstance(v, (Mapping, list)))
        elif isinstance(value, list):
            count += len(value)
            stack.extend(v for v in value if isinstance(v, (Mapping, list)))
    return count
