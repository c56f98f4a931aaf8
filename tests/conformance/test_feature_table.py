"""``docs/features.md`` must match the corpus: every operation it cites exists, every category is covered.

The table is the documented claim of what is transparent in isolation mode; the corpus is the
proof. This keeps the two from drifting apart.
"""

from __future__ import annotations

import re
from pathlib import Path

from .corpus import OPS

DOC = Path(__file__).resolve().parents[2] / "docs" / "features.md"
CATEGORIES = {name.split(".", 1)[0] for name in OPS}
# a backticked `category.name` whose category is one of the corpus's
CITATION = re.compile(r"`((?:" + "|".join(sorted(CATEGORIES)) + r")\.[A-Za-z0-9_]+)`")


def cited() -> set[str]:
    return set(CITATION.findall(DOC.read_text(encoding="utf-8")))


def test_every_operation_the_feature_table_cites_exists() -> None:
    unknown = sorted(cited() - set(OPS))
    assert not unknown, f"docs/features.md cites operations the corpus does not have: {unknown}"


def test_every_category_of_the_corpus_is_in_the_feature_table() -> None:
    covered = {name.split(".", 1)[0] for name in cited() & set(OPS)}
    assert covered == CATEGORIES, f"categories without a cited operation: {sorted(CATEGORIES - covered)}"


def test_the_check_can_fail() -> None:
    assert "filter.no_such_operation" not in OPS
    assert CITATION.findall("see `filter.no_such_operation` and `sqlalchemy.exc`") == ["filter.no_such_operation"]
