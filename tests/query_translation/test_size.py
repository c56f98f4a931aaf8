"""``measure_document``: the size of a statement document with its references expanded."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from query_translation import measure_document, to_wire
from tests.query_translation._repeating import doubling_chain, repeating_documents

metadata = sa.MetaData()
variable = sa.Table("variable", metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("key", sa.String(50)))


@settings(max_examples=300, deadline=None)
@given(repeating_documents())
def test_measure_counts_every_expansion(document: tuple[dict[str, Any], int]) -> None:
    doc, expected = document
    assert measure_document(doc).expanded == expected


def test_measure_is_linear_in_the_document() -> None:
    """A chain of 5,000 doublings measures in one pass: it stands for 2**5000 nodes."""
    size = measure_document(doubling_chain(5000))
    assert size.nodes == 2 * 5000 + 3  # binary + ref per level, the select, the leaf, its table
    assert size.expanded.bit_length() == 5000 + 2
    ordinary = sa.select(variable.c.id, variable.c.key).where(variable.c.id > 1).order_by(variable.c.key)
    measured = measure_document(to_wire(ordinary))
    assert measured.expanded == measured.nodes + 2  # two column references to one table, counted once each
    assert measured.columns == 2


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.sampled_from(["ref", "@", "t"]),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["t", "@", "from", "left", "cols", "x", "statement"]), inner, max_size=4),
                     max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(_json)
@example({"t": "select", "cols": [{"t": {"stmt": 1}, "@": 1}, {"t": "ref", "@": 1}]})
def test_measure_never_fails_on_any_json(document: Any) -> None:
    """It runs before validation: any JSON at all is measured, never an exception (the fuzzer found
    a node whose "t" was an object)."""
    size = measure_document(document)
    assert size.expanded >= 0 and size.nodes >= 0
