"""The comparison logic of tools/sa_suite.py: JUnit outcomes, grouping by cause, explanations,
stale entries, and what makes ``--check`` fail."""

from __future__ import annotations

import io
import re
import tarfile
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
                 "error": '<error message="RuntimeError: setup">tb</error>',
                 "skipped": '<skipped message="skip"/>'}[outcome]
        body.append(f'<testcase classname="{classname}" name="{test}">{inner}</testcase>')
    path = tmp_path / name
    path.write_text(JUNIT.format(cases="\n".join(body)))
    return path


def _runs(tmp_path: Path, direct: dict[str, str], isolated: dict[str, str]) -> tuple[dict, dict]:
    return (sa_suite.outcomes(_xml(tmp_path, "d.xml", direct)),
            sa_suite.outcomes(_xml(tmp_path, "i.xml", isolated)))


def _check(report: dict[str, object], direct_total: int, *, backend: str = "sqlite", subset: str | None = "core",
           enforce_stale: bool = True) -> list[str]:
    return sa_suite.check_failures(report, direct_total, backend, subset, enforce_stale=enforce_stale)


def test_compare_counts_and_groups_by_normalised_cause(tmp_path: Path) -> None:
    direct, isolated = _runs(tmp_path, {
        "t.A::one": "passed", "t.A::two": "passed", "t.B::three[p-1]": "passed", "t.B::four": "skipped"}, {
        "t.A::one": "passed", "t.A::two": "failed", "t.B::three[p-1]": "failed", "t.B::four": "passed"})
    report = sa_suite.compare(direct, isolated, {"t.B::three[[]p-1]": "ARTEFACT: why"})
    assert (report["direct_passed"], report["isolated_passed"], report["both_passed"]) == (3, 2, 1)
    assert report["ratio"] == pytest.approx(1 / 3)
    assert report["lost"] == ["t.A::two", "t.B::three[p-1]"]
    assert report["groups"] == {"failed: ValueError: bad N '…'": ["t.A::two", "t.B::three[p-1]"]}
    assert report["unexplained"] == ["t.A::two"]
    assert report["explained"] == {"t.B::three[p-1]": "ARTEFACT: why"}
    # skipped directly (a requirement the direct dialect lacks) is reported, not a difference
    assert report["gained"] == []
    assert report["skipped_directly_pass_isolated"] == ["t.B::four"]


def test_the_committed_file_is_read_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = tmp_path / "expected.txt"
    expected.write_text("# comment\nt.A::two  # ARTEFACT: why\n")
    monkeypatch.setattr(sa_suite, "EXPECTED", expected)
    direct, isolated = _runs(tmp_path, {"t.A::two": "passed"}, {"t.A::two": "failed"})
    assert sa_suite.compare(direct, isolated)["explained"] == {"t.A::two": "ARTEFACT: why"}


def test_a_clean_comparison_passes_the_check(tmp_path: Path) -> None:
    tests = {f"t.A::t{i}": "passed" for i in range(200)}
    direct, isolated = _runs(tmp_path, tests, {**tests, "t.A::t0": "failed"})
    report = sa_suite.compare(direct, isolated, {"t.A::t0": "ARTEFACT: why"}, "sqlite", ["t"])
    assert _check(report, len(direct)) == []


def test_below_the_bar_fails(tmp_path: Path) -> None:
    tests = {f"t.A::t{i}": "passed" for i in range(100)}
    direct, isolated = _runs(tmp_path, tests, {**tests, "t.A::t0": "failed", "t.A::t1": "failed"})
    report = sa_suite.compare(direct, isolated, {"t.A::t*": "ARTEFACT: all explained"})
    assert report["unexplained"] == []
    [failure] = _check(report, len(direct))
    assert "98.00 %" in failure and "bar" in failure


def test_an_unexplained_loss_fails(tmp_path: Path) -> None:
    tests = {f"t.A::t{i}": "passed" for i in range(200)}
    direct, isolated = _runs(tmp_path, tests, {**tests, "t.A::t7": "error"})
    report = sa_suite.compare(direct, isolated, {})
    assert report["groups"] == {"error: RuntimeError: setup": ["t.A::t7"]}
    [failure] = _check(report, len(direct))
    assert "1 tests pass directly, fail through isolation" in failure


def test_passing_only_through_isolation_is_a_difference_too(tmp_path: Path) -> None:
    tests = {f"t.A::t{i}": "passed" for i in range(200)}
    direct, isolated = _runs(tmp_path, {**tests, "t.B::x": "failed", "t.B::y": "error"},
                             {**tests, "t.B::x": "passed", "t.B::y": "passed", "t.B::new": "passed"})
    report = sa_suite.compare(direct, isolated, {})
    assert report["gained"] == ["t.B::new", "t.B::x", "t.B::y"]
    assert report["gained_groups"] == {"failed directly: ValueError: bad N '…'": ["t.B::x"],
                                       "error directly: RuntimeError: setup": ["t.B::y"],
                                       "missing directly: not run directly": ["t.B::new"]}
    assert report["ratio"] == 1.0
    [failure] = _check(report, len(direct))
    assert "3 tests pass through isolation, fail directly" in failure

    listed = sa_suite.compare(direct, isolated, {"t.B::*": "ARTEFACT: why"})
    assert listed["unexplained_gained"] == [] and _check(listed, len(direct)) == []


def test_a_broken_direct_run_fails(tmp_path: Path) -> None:
    # everything errors directly (database down): nothing is lost, the ratio says nothing
    tests = {f"t.A::t{i}": "error" for i in range(100)}
    direct, isolated = _runs(tmp_path, {**tests, "t.A::ok": "passed"}, {**tests, "t.A::ok": "passed"})
    report = sa_suite.compare(direct, isolated, {})
    assert report["ratio"] == 1.0 and report["lost"] == []
    [failure] = _check(report, len(direct))
    assert "a broken baseline" in failure
    # a single file may pass few of its tests (the rest skipped): only no pass at all is broken
    assert _check(report, len(direct), subset=None) == []
    # no direct results at all (the run crashed before writing its XML)
    report = sa_suite.compare({}, {}, {})
    assert any("broken baseline" in f for f in _check(report, 0, subset=None))


def test_the_full_suite_has_a_floor_per_backend(tmp_path: Path) -> None:
    tests = {f"t.A::t{i}": "passed" for i in range(200)}
    direct, isolated = _runs(tmp_path, tests, tests)
    report = sa_suite.compare(direct, isolated, {})
    assert _check(report, len(direct), subset="core") == []
    [failure] = _check(report, len(direct), backend="postgresql", subset="full")
    assert f"below the postgresql floor of {sa_suite.DIRECT_FLOOR['postgresql']}" in failure


SQLITE_CLS = "test.orm.test_x.Versioned_sqlite+pysqlite_3_40_1"
PG_CLS = "test.orm.test_x.Versioned_postgresql+psycopg_15_4"


def test_entries_name_their_backend_and_patterns_are_told_from_single_tests() -> None:
    assert sa_suite.entry_backend("test.orm.test_x.Versioned_sqlite+pysqlite_*::test_a") == "sqlite"
    assert sa_suite.entry_backend(f"{PG_CLS}::test_a[[]x]") == "postgresql"
    assert sa_suite.entry_backend("test.orm.test_x.Plain::test_a") is None
    assert not sa_suite.is_pattern("test.orm.test_x.Versioned_sqlite+pysqlite_*::test_a[[]p-1]")
    assert not sa_suite.is_pattern("test.orm.test_x.Plain::test_a")
    assert sa_suite.is_pattern("test.orm.test_x.Plain::test_*")
    assert sa_suite.is_pattern("test.orm.test_x.Bulk*_random_sqlite+pysqlite_*::test_a")
    assert sa_suite.is_pattern("test.orm.test_x.Plain::test_a[[]p-?]")


def test_an_entry_naming_the_test_explains_it_before_a_family_pattern() -> None:
    expected = {"test.orm.test_x.Bulk*_random_*::test_*": "ARTEFACT: family",
                "test.orm.test_x.Bulk_random_sqlite+pysqlite_*::test_a[[]p]": "ARTEFACT: this one"}
    assert sa_suite.explain("test.orm.test_x.Bulk_random_sqlite+pysqlite_3_40_1::test_a[p]", expected) == "ARTEFACT: this one"
    assert sa_suite.explain("test.orm.test_x.Bulk_random_sqlite+pysqlite_3_40_1::test_b", expected) == "ARTEFACT: family"


def _stale_fixture(tmp_path: Path) -> tuple[dict, dict]:
    tests = {f"test.orm.test_y.Other::t{i}": "passed" for i in range(200)}
    return _runs(tmp_path, {
        **tests, f"{SQLITE_CLS}::test_fixed": "passed", f"{SQLITE_CLS}::test_differs": "passed",
        "test.orm.test_x.Plain::test_broken_both": "failed"}, {
        **tests, f"{SQLITE_CLS}::test_fixed": "passed", f"{SQLITE_CLS}::test_differs": "failed",
        "test.orm.test_x.Plain::test_broken_both": "failed"})


EXPECTED_FOR_STALE = {
    "test.orm.test_x.Versioned_sqlite+pysqlite_*::test_differs": "ARTEFACT: a",
    "test.orm.test_x.Versioned_sqlite+pysqlite_*::test_fixed": "REAL: fixed since",
    "test.orm.test_x.Plain::test_broken_both": "REAL: fails both ways now",
    "test.orm.test_x.Plain::test_renamed": "REAL: the test is gone",
    "test.orm.test_x.Versioned_postgresql+psycopg_*::test_fixed": "REAL: the other backend's",
    "test.orm.test_z.Elsewhere::test_a": "REAL: a module this run did not cover",
    "test.orm.test_x.Bulk*_random_*::test_*": "ARTEFACT: random",
}


def test_stale_entries_are_reported_and_fail_the_check(tmp_path: Path) -> None:
    direct, isolated = _stale_fixture(tmp_path)
    report = sa_suite.compare(direct, isolated, EXPECTED_FOR_STALE, "sqlite",
                              ["test/orm/test_x.py", "test/orm/test_y.py"])
    assert report["explained"] == {f"{SQLITE_CLS}::test_differs": "ARTEFACT: a"}
    assert report["stale"] == {
        "test.orm.test_x.Versioned_sqlite+pysqlite_*::test_fixed": "no difference: passed directly, passed through isolation",
        "test.orm.test_x.Plain::test_broken_both": "no difference: failed directly, failed through isolation",
        "test.orm.test_x.Plain::test_renamed": "no such test in this run",
    }
    assert report["unmatched_patterns"] == ["test.orm.test_x.Bulk*_random_*::test_*"]
    [failure] = _check(report, len(direct))
    assert "3 stale entries" in failure
    # a run narrowed by extra pytest arguments (-k) cannot tell a stale entry
    assert _check(report, len(direct), enforce_stale=False) == []


def test_the_other_backends_entries_are_judged_by_its_own_run(tmp_path: Path) -> None:
    direct, isolated = _stale_fixture(tmp_path)
    report = sa_suite.compare(direct, isolated, EXPECTED_FOR_STALE, "postgresql",
                              ["test/orm/test_x.py", "test/orm/test_y.py"])
    # the SQLite entries are not this run's; the PostgreSQL one names a test this run lacks
    assert "test.orm.test_x.Versioned_sqlite+pysqlite_*::test_fixed" not in report["stale"]
    assert report["stale"]["test.orm.test_x.Versioned_postgresql+psycopg_*::test_fixed"] == "no such test in this run"


def test_a_whole_run_covers_every_module(tmp_path: Path) -> None:
    direct, isolated = _stale_fixture(tmp_path)
    report = sa_suite.compare(direct, isolated, {"test.orm.test_z.Elsewhere::test_a": "REAL: gone"},
                              "sqlite", ["test/orm"])
    assert report["stale"] == {"test.orm.test_z.Elsewhere::test_a": "no such test in this run"}


def test_a_missing_run_has_no_outcomes(tmp_path: Path) -> None:
    assert sa_suite.outcomes(tmp_path / "absent.xml") == {}


def _sdist(path: Path, top: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{top}/test/orm/test_a.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"\n"))


@pytest.mark.parametrize("spelling", ["sqlalchemy", "SQLAlchemy"])
def test_the_sdist_is_found_whatever_the_case_of_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          spelling: str) -> None:
    monkeypatch.setattr(sa_suite.sa, "__version__", "9.9.9")
    _sdist(tmp_path / "sdist" / f"{spelling}-9.9.9.tar.gz", f"{spelling}-9.9.9")
    monkeypatch.setattr(sa_suite.subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
    target = sa_suite.sdist_dir(tmp_path)
    assert target == tmp_path / f"{spelling}-9.9.9"
    assert (target / "test" / "orm" / "test_a.py").is_file()
    assert sa_suite.sdist_dir(tmp_path) == target  # unpacked once
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpacking")] == []


def test_the_sdist_is_downloaded_without_building_its_build_requirements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sa_suite.sa, "__version__", "9.9.9")
    calls = []

    def pip(cmd: list[str], **kw: object) -> None:
        calls.append(cmd)
        _sdist(Path(cmd[cmd.index("-d") + 1]) / "sqlalchemy-9.9.9.tar.gz", "sqlalchemy-9.9.9")

    monkeypatch.setattr(sa_suite.subprocess, "run", pip)
    assert sa_suite.sdist_dir(tmp_path) == tmp_path / "sqlalchemy-9.9.9"
    [cmd] = calls
    assert cmd[cmd.index("--no-binary") + 1] == "sqlalchemy"  # not :all: (setuptools, Cython from source)
    assert "--no-deps" in cmd and "sqlalchemy==9.9.9" in cmd


CATEGORIES = ("REAL", "BY DESIGN", "ARTEFACT")
HEADER = re.compile(r"^# --- (?P<tag>[A-Z-]+) \(SQLite (?P<sqlite>\d+), PostgreSQL (?P<postgresql>\d+) tests "
                    r"in the measured runs\): (?P<reason>.+)$")


def test_the_committed_explanations_are_well_formed() -> None:
    entries = sa_suite.load_expected()
    assert entries
    headers = {}
    for line in sa_suite.EXPECTED.read_text().splitlines():
        if line.startswith("# --- "):
            match = HEADER.match(line)
            assert match, line
            assert match["reason"].startswith(CATEGORIES), line
            headers[match["tag"]] = match
    tags = {reason.split()[0] for reason in entries.values()}
    assert tags == set(headers)
    for tag, header in headers.items():
        listed = [entry for entry, reason in entries.items() if reason.split()[0] == tag]
        if any(sa_suite.is_pattern(entry) for entry in listed):
            continue  # a family: its count is the measured one
        # one entry per test, for its backend or (no per-backend class) for both
        for backend in ("sqlite", "postgresql"):
            count = sum(1 for entry in listed if sa_suite.entry_backend(entry) in (None, backend))
            assert count == int(header[backend]), (tag, backend)
