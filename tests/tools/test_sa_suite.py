"""The comparison logic of tools/sa_suite.py: JUnit outcomes, grouping by cause, explanations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import sa_suite

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
{cases}
</testsuite></testsuites>"""


def _xml(tmp_path: Path, name: str, cases: dict[str, str]) -> Path:
    body = []
    for test_id, outcome in cases.items():
        classname, _, test = test_id.partition("::")
        inner = {"passed": "", "failed": '<failure message="ValueError: bad 42 \'x\'">tb</failure>',
                 "skipped": '<skipped message="skip"/>'}[outcome]
        body.append(f'<testcase classname="{classname}" name="{test}">{inner}</testcase>')
    path = tmp_path / name
    path.write_text(JUNIT.format(cases="\n".join(body)))
    return path


def test_compare_counts_and_groups_by_normalised_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = sa_suite.outcomes(_xml(tmp_path, "d.xml", {
        "t.A::one": "passed", "t.A::two": "passed", "t.B::three[p-1]": "passed", "t.B::four": "skipped"}))
    isolated = sa_suite.outcomes(_xml(tmp_path, "i.xml", {
        "t.A::one": "passed", "t.A::two": "failed", "t.B::three[p-1]": "failed", "t.B::four": "passed"}))
    expected = tmp_path / "expected.txt"
    expected.write_text("# comment\nt.B::three[[]p-1]  # ARTEFACT: why\n")
    monkeypatch.setattr(sa_suite, "EXPECTED", expected)
    report = sa_suite.compare(direct, isolated)
    assert (report["direct_passed"], report["isolated_passed"], report["both_passed"]) == (3, 2, 1)
    assert report["ratio"] == pytest.approx(1 / 3)
    assert report["lost"] == ["t.A::two", "t.B::three[p-1]"]
    assert report["groups"] == {"failed: ValueError: bad N '…'": ["t.A::two", "t.B::three[p-1]"]}
    assert report["unexplained"] == ["t.A::two"]
    assert report["explained"] == {"t.B::three[p-1]": "ARTEFACT: why"}
    assert report["only_isolated"] == ["t.B::four"]


def test_a_missing_run_has_no_outcomes(tmp_path: Path) -> None:
    assert sa_suite.outcomes(tmp_path / "absent.xml") == {}


def test_the_committed_explanations_are_well_formed() -> None:
    entries = sa_suite.load_expected()
    assert entries
    categories = ("REAL", "BY DESIGN", "ARTEFACT", "HARNESS")
    text = sa_suite.EXPECTED.read_text()
    for tag in {reason.split()[0] for reason in entries.values()}:
        header = next(line for line in text.splitlines() if line.startswith(f"# --- {tag} "))
        assert any(c in header for c in categories), header
