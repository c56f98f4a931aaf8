"""Statement documents whose nodes repeat earlier ones by reference (``{"t": "ref", "@": k}``),
for the size measure's tests and the server's (``tests/security/test_bounded_work.py``)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["column_of", "doubling_chain", "repeating_documents"]


def column_of(table_ref: dict[str, Any], key: str = "id") -> dict[str, Any]:
    return {"t": "col", "from": table_ref, "key": key}


def doubling_chain(levels: int) -> dict[str, Any]:
    """Finding 5: each binary node's left and right are both the node before."""
    node: dict[str, Any] = {**column_of({"t": "table", "name": "variable"}), "@": 1}
    for k in range(2, levels + 2):
        node = {"t": "binary", "op": "add", "left": node, "right": {"t": "ref", "@": k - 1},
                "type": {"n": "Integer"}, "@": k}
    return {"version": 2, "statement": {"t": "select", "cols": [node]}}


@st.composite
def repeating_documents(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A statement whose expression nodes reuse earlier ones by reference, in every node kind that
    holds other expressions; and its size expanded by brute force (each reference replaced by a
    copy of the node it names), for comparison."""
    table = {"t": "table", "name": "variable", "@": 1}
    made: list[tuple[dict[str, Any], int]] = []  # (definition, expanded size) of reusable nodes
    used: set[int] = set()  # indexes into made whose definition is placed (later uses refer to it)
    table_placed: list[bool] = []
    next_id = 2

    def use(index: int) -> tuple[dict[str, Any], int]:
        node, size = made[index]
        if index in used:
            return {"t": "ref", "@": node["@"]}, size
        used.add(index)
        return node, size

    def leaf() -> tuple[dict[str, Any], int]:
        first = not table_placed
        table_placed.append(True)
        key = draw(st.sampled_from(["id", "key", "val"]))
        return column_of(table if first else {"t": "ref", "@": 1}, key), 2

    for _ in range(draw(st.integers(1, 14))):
        def child() -> tuple[dict[str, Any], int]:
            if made and draw(st.booleans()):
                return use(draw(st.integers(0, len(made) - 1)))
            return leaf()

        kind = draw(st.sampled_from(["binary", "function", "tuple", "case", "grouping", "cast", "unary",
                                     "boolean_list"]))
        if kind == "binary":
            (left, a), (right, b) = child(), child()
            node, size = {"t": "binary", "op": "add", "left": left, "right": right, "type": {"n": "Integer"}}, 1 + a + b
        elif kind in ("function", "tuple", "boolean_list"):
            parts = [child() for _ in range(draw(st.integers(1, 4)))]
            field = {"function": "args"}.get(kind, "clauses")
            node = {"t": kind, field: [p for p, _ in parts]}
            node.update({"function": {"name": "coalesce", "type": {"n": "Integer"}},
                         "tuple": {}, "boolean_list": {"op": "and_", "type": {"n": "Boolean"}}}[kind])
            size = 1 + sum(s for _, s in parts)
        elif kind == "case":
            (when, a), (then, b), (other, c) = child(), child(), child()
            node, size = {"t": "case", "whens": [[when, then]], "else": other, "type": {"n": "Integer"}}, 1 + a + b + c
        else:
            element, a = child()
            node = {"t": kind, "element": element}
            node.update({"cast": {"type": {"n": "String"}}, "unary": {"op": "neg", "type": {"n": "Integer"}},
                         "grouping": {}}[kind])
            size = 1 + a
        node["@"] = next_id
        next_id += 1
        made.append((node, size))
    # every node nothing else holds is a column: so each definition is somewhere in the document
    roots = [use(index) for index in range(len(made)) if index not in used]
    return {"version": 2, "statement": {"t": "select", "cols": [r for r, _ in roots]}}, 1 + sum(s for _, s in roots)
