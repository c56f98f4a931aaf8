"""SQLAlchemy's own ORM test suite, directly and through the isolation path, compared.

    python tools/sa_suite.py --backend sqlite [--subset core|full|PATH...] [--jobs N] [--check]

Downloads the SQLAlchemy source distribution matching the installed version (``pip download
--no-binary sqlalchemy``, into the scratch directory), then runs its ``test/orm`` (or a subset) twice with SQLAlchemy's
own pytest plugin:

* **direct** - ``--dburi`` the backend's normal driver (SQLite: a file database, as the suite's
  own ``sqlite_file`` configuration; PostgreSQL: a scratch database created and dropped here);
* **isolation** - ``--dburi sqlite+dbsession://127.0.0.1:PORT/`` (or ``postgresql+...``), with a
  real DB-API server for a second scratch database, started by ``tools/sa_suite_plugin.py`` with
  the test policy (DDL and raw SQL allowed).

It prints the tests passing in each run and every test that passes directly but fails through
isolation, grouped by cause (the first line of the failure, numbers and names normalised). The
full result goes to ``SCRATCH/result-BACKEND.json``. With ``--check`` it exits 1 when fewer than
99 % of the directly passing tests pass through isolation, or when a difference is not listed in
``tools/sa_suite_expected.txt`` (a test id or fnmatch pattern, then ``#`` and the reason).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
EXPECTED = Path(__file__).resolve().parent / "sa_suite_expected.txt"
BAR = 0.99
# A plausible direct run (docs/sqlalchemy-test-suite.md, "Results"): of a named subset it passes
# at least this share of what it collects (measured: full 97 % SQLite, 98 % PostgreSQL; core 99 %
# SQLite), and of the full test/orm at least the backend's floor (measured with SQLAlchemy 2.1.9: 11,543 SQLite, 11,698 PostgreSQL).
MIN_DIRECT_FRACTION = 0.95
DIRECT_FLOOR = {"sqlite": 11_300, "postgresql": 11_400}
PG_ADMIN = os.environ.get("SA_SUITE_PG_ADMIN", "postgresql+psycopg://root@127.0.0.1:5432/postgres")

# a fast subset: the ORM's core behaviours (query, session, unit of work, relationship loading)
SUBSETS = {
    "core": ["test/orm/test_query.py", "test/orm/test_session.py", "test/orm/test_unitofwork.py",
             "test/orm/test_unitofworkv2.py", "test/orm/test_relationships.py",
             "test/orm/test_eager_relations.py", "test/orm/test_lazy_relations.py",
             "test/orm/test_selectin_relations.py", "test/orm/inheritance"],
    "full": ["test/orm"],
}


def sdist_dir(scratch: Path) -> Path:
    """The unpacked source distribution of the installed SQLAlchemy version.

    The archive's name depends on the release: ``sqlalchemy-X.tar.gz`` since the normalised sdist
    names (PEP 625), ``SQLAlchemy-X.tar.gz`` before (some 2.0 releases), with a top directory of
    the same spelling; both are found by name regardless of case, and the directory is read from
    the archive.
    """
    version = sa.__version__
    for name in (f"sqlalchemy-{version}", f"SQLAlchemy-{version}"):
        if (scratch / name / "test" / "orm").is_dir():
            return scratch / name
    download = scratch / "sdist"
    archive = _find_archive(download, version)
    if archive is None:
        # --no-binary for SQLAlchemy only: pip still prepares the sdist's metadata, in an isolated
        # build environment, and with --no-binary :all: that environment's build requirements
        # (setuptools, Cython) would be built from source too - minutes of compiling, and a C
        # compiler needed. With this they come as wheels; only SQLAlchemy's dist_info step runs.
        # pip checks the archive against the index's sha256.
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-binary", "sqlalchemy", f"sqlalchemy=={version}",
                        "-d", str(download)], check=True)
        archive = _find_archive(download, version)
        if archive is None:
            raise SystemExit(f"pip download left no sqlalchemy-{version}.tar.gz in {download}")
    with tarfile.open(archive) as tar:
        roots = {member.name.split("/", 1)[0] for member in tar.getmembers()}
        if len(roots) != 1:
            raise SystemExit(f"{archive}: expected one top directory, found {sorted(roots)}")
        # unpack beside the target and rename, so that an interrupted unpack is not taken for a sdist
        partial = scratch / f".unpacking-{os.getpid()}"
        tar.extractall(partial, filter="data")
    target = scratch / roots.pop()
    if target.exists():  # an unpack without test/orm: not a usable sdist
        shutil.rmtree(target)
    (partial / target.name).rename(target)
    partial.rmdir()
    return target


def _find_archive(download: Path, version: str) -> Path | None:
    wanted = f"sqlalchemy-{version}.tar.gz"
    found = [p for p in download.glob("*.tar.gz") if p.name.lower() == wanted] if download.is_dir() else []
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """Scratch databases for one run: the direct one and the one the DB-API server serves."""

    def __init__(self, name: str, scratch: Path, sdist: Path) -> None:
        self.name, self.scratch, self.sdist = name, scratch, sdist
        self.created: list[str] = []

    def url(self, role: str) -> str:
        if self.name == "sqlite":
            if role == "direct":
                # the suite's own "sqlite_file" configuration, relative to the sdist it runs in:
                # its provisioning renames the file from the path's tokens (querytest_pysqlite.db)
                for leftover in self.sdist.glob("querytest*.db*"):
                    leftover.unlink()
                return "sqlite:///querytest.db"
            path = self.scratch / f"{role}.db"
            for leftover in self.scratch.glob(f"{role}*.db"):
                leftover.unlink()
            return f"sqlite:///{path}"
        name = f"sa_suite_{role}_{secrets.token_hex(4)}"
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        self.created.append(name)
        url = sa.make_url(PG_ADMIN).set(database=name)
        scratch_db = sa.create_engine(url)
        with scratch_db.begin() as conn:  # the schemas SQLAlchemy's PostgreSQL tests expect
            for schema in ("test_schema", "test_schema_2"):
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        scratch_db.dispose()
        return url.render_as_string(hide_password=False)

    def drop(self) -> None:
        if not self.created:
            return
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.created:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def run_suite(mode: str, backend: Backend, sdist: Path, paths: list[str], scratch: Path,
              jobs: int, extra: list[str]) -> Path:
    """One pytest run of the suite; returns its JUnit XML."""
    xml = scratch / f"{mode}-{backend.name}.xml"
    log = scratch / f"{mode}-{backend.name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = ["nice", sys.executable, "-s", "-m", "pytest", *paths, "-p", "no:cacheprovider",
           "-o", "addopts=", "-p", "warnings", "-p", "logging", "--tb=native", "-q", "-rN",
           f"--junitxml={xml}", "-o", "junit_logging=no", *extra]
    if mode == "direct":
        cmd += ["--dburi", backend.url("direct")]
    else:
        port = free_port()
        env.update(SA_SUITE_SERVER_DB=backend.url("server"), SA_SUITE_PORT=str(port))
        cmd += ["-p", "tools.sa_suite_plugin", "--dburi", f"{backend.name}+dbsession://127.0.0.1:{port}/"]
    if jobs > 1:
        cmd += ["-n", str(jobs)]
    started = time.monotonic()
    with log.open("w") as out:
        subprocess.run(cmd, cwd=sdist, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    print(f"  {mode}: {time.monotonic() - started:.0f} s (log {log})", flush=True)
    return xml


def outcomes(xml: Path) -> dict[str, tuple[str, str]]:
    """test id -> (passed|failed|error|skipped, first line of the failure)."""
    result: dict[str, tuple[str, str]] = {}
    if not xml.exists():
        return result
    for case in ET.parse(xml).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or child.text or "").strip().splitlines()[:1]
                message = message[0] if message else ""
                break
        if test_id in result and result[test_id][0] != "passed":
            continue  # a teardown error after a call result keeps the failure
        result[test_id] = (outcome, message[:300])
    return result


_NORMALISE = [(re.compile(r"0x[0-9a-f]+"), "0x…"), (re.compile(r"'[^']*'"), "'…'"),
              (re.compile(r"\"[^\"]*\""), '"…"'), (re.compile(r"\b\d+\b"), "N"),
              (re.compile(r"\(error id [0-9a-f]+\)"), "")]


def cause(message: str) -> str:
    text = message
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return text[:160] or "(no message)"


def load_expected(path: Path | None = None) -> dict[str, str]:
    """Entry (test id or fnmatch pattern) -> reason, from *path* (the committed file by default)."""
    path = EXPECTED if path is None else path
    expected: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                test_id, _, reason = line.partition("#")
                expected[test_id.strip()] = reason.strip()
    return expected


def explain(test_id: str, expected: dict[str, str]) -> str | None:
    """The reason listed for *test_id* (entries may be fnmatch patterns), or None.

    An entry naming the test is preferred over a pattern of a family it also belongs to.
    """
    if test_id in expected:
        return expected[test_id]
    for entry, reason in sorted(expected.items(), key=lambda item: is_pattern(item[0])):
        if fnmatch.fnmatchcase(test_id, entry):
            return reason
    return None


# A per-backend test class carries the database in its name: Foo_sqlite+pysqlite_3_40_1,
# Foo_postgresql+psycopg_15_4. Entries name it with "*" for the server version.
_BACKEND_CLASS = re.compile(r"_(?P<backend>[a-z]+)\+[a-z0-9]+_(?:\*|[0-9_]+)(?=::)")


def entry_backend(entry: str) -> str | None:
    """The backend an entry is for (a per-backend class), or None: it applies to every backend."""
    found = _BACKEND_CLASS.search(entry)
    return found["backend"] if found else None


def is_pattern(entry: str) -> bool:
    """Whether an entry stands for a family of tests rather than one test (per backend).

    The "*" for the server version of a per-backend class and an escaped bracket ("[[]" in a
    parametrised id) do not make a pattern; any other wildcard does.
    """
    core = _BACKEND_CLASS.sub("", entry).replace("[[]", "")
    return any(c in core for c in "*?[")


def _in_paths(entry: str, paths: list[str]) -> bool:
    """Whether the test module an entry names lies under one of the run's paths."""
    module = entry.partition("::")[0].rsplit(".", 1)[0].replace(".", "/") + ".py"
    for path in paths:
        path = path.rstrip("/")
        if module == path or module.startswith(path + "/"):
            return True
    return False


def compare(direct: dict[str, tuple[str, str]], isolated: dict[str, tuple[str, str]],
            expected: dict[str, str] | None = None, backend: str | None = None,
            paths: list[str] | None = None) -> dict[str, object]:
    """The two runs compared test by test, every difference matched against *expected*.

    Differences both ways: ``lost`` (passes directly, not through isolation) and ``gained``
    (passes through isolation, fails, errors or is missing directly). Entries of *expected* for
    this *backend* that match no difference are ``stale``: an entry for one test whose test now
    passes in both modes, fails in both, or no longer exists in a run covering its module
    (*paths*); a pattern that matches no difference goes to ``unmatched_patterns`` (a family may
    differ only at random).
    """
    expected = load_expected() if expected is None else expected
    passing_direct = {t for t, (o, _) in direct.items() if o == "passed"}
    passing_isolated = {t for t, (o, _) in isolated.items() if o == "passed"}
    lost = sorted(passing_direct - passing_isolated)
    gained = sorted(t for t in passing_isolated - passing_direct
                    if direct.get(t, ("missing", ""))[0] != "skipped")
    groups: dict[str, list[str]] = defaultdict(list)
    for test_id in lost:
        outcome, message = isolated.get(test_id, ("missing", "not run through isolation"))
        groups[f"{outcome}: {cause(message)}"].append(test_id)
    gained_groups: dict[str, list[str]] = defaultdict(list)
    for test_id in gained:
        outcome, message = direct.get(test_id, ("missing", "not run directly"))
        gained_groups[f"{outcome} directly: {cause(message)}"].append(test_id)
    differences = lost + gained
    explained = {t: r for t in differences if (r := explain(t, expected)) is not None}

    collected = set(direct) | set(isolated)
    stale: dict[str, str] = {}
    unmatched_patterns: list[str] = []
    for entry in expected:
        if backend is not None and entry_backend(entry) not in (None, backend):
            continue  # the other backend's entry
        if any(t == entry or fnmatch.fnmatchcase(t, entry) for t in differences):
            continue
        if is_pattern(entry):
            unmatched_patterns.append(entry)
            continue
        tests = [t for t in collected if t == entry or fnmatch.fnmatchcase(t, entry)]
        if tests:
            test_id = tests[0]
            stale[entry] = (f"no difference: {direct.get(test_id, ('missing',))[0]} directly, "
                            f"{isolated.get(test_id, ('missing',))[0]} through isolation")
        elif paths is not None and _in_paths(entry, paths):
            stale[entry] = "no such test in this run"

    both = len(passing_direct & passing_isolated)
    return {
        "direct_passed": len(passing_direct), "isolated_passed": len(passing_isolated),
        "both_passed": both,
        "ratio": both / len(passing_direct) if passing_direct else 0.0,
        "lost": lost, "gained": gained,
        "skipped_directly_pass_isolated": sorted(
            t for t in passing_isolated if direct.get(t, ("missing", ""))[0] == "skipped"),
        "unexplained": [t for t in lost if t not in explained],
        "unexplained_gained": [t for t in gained if t not in explained],
        "explained": explained,
        "stale": stale, "unmatched_patterns": unmatched_patterns,
        "groups": dict(sorted(groups.items(), key=lambda kv: -len(kv[1]))),
        "gained_groups": dict(sorted(gained_groups.items(), key=lambda kv: -len(kv[1]))),
        "messages": {t: isolated.get(t, ("missing", ""))[1] for t in lost},
    }


def check_failures(report: dict[str, object], direct_total: int, backend: str, subset: str | None,
                   enforce_stale: bool = True) -> list[str]:
    """Why ``--check`` fails (empty: it passes).

    Besides the bar and the explanations: a direct run that passes implausibly few tests (a
    broken baseline - missing driver, database down, collection errors - would otherwise make
    the ratio meaningless) fails: no pass at all; for a named *subset* ("core", "full") below
    MIN_DIRECT_FRACTION of the tests it collected (single files vary: test_naturalpks.py passes
    67 % on SQLite, the rest skipped); for "full" below the backend's DIRECT_FLOOR.
    """
    failures = []
    direct_passed = int(report["direct_passed"])  # type: ignore[call-overload]
    if not direct_passed or (subset in SUBSETS and direct_passed < MIN_DIRECT_FRACTION * direct_total):
        failures.append(f"the direct run passed {direct_passed} of {direct_total} collected tests "
                        f"(at least {100 * MIN_DIRECT_FRACTION:.0f} % expected): a broken baseline")
    if subset == "full" and direct_passed < DIRECT_FLOOR[backend]:
        failures.append(f"the direct run passed {direct_passed} tests, below the {backend} floor "
                        f"of {DIRECT_FLOOR[backend]} for the full test/orm: a broken baseline")
    if report["ratio"] < BAR:  # type: ignore[operator]
        failures.append(f"{100 * report['ratio']:.2f} % of the directly passing tests pass through "  # type: ignore[operator]
                        f"isolation, below the bar of {100 * BAR:.0f} %")
    for key, what in (("unexplained", "pass directly, fail through isolation"),
                      ("unexplained_gained", "pass through isolation, fail directly")):
        if report[key]:
            failures.append(f"{len(report[key])} tests {what}, not explained in {EXPECTED.name}")  # type: ignore[arg-type]
    if enforce_stale and report["stale"]:
        failures.append(f"{len(report['stale'])} stale entries in {EXPECTED.name}")  # type: ignore[arg-type]
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--subset", nargs="+", default=["core"],
                        help="'core', 'full', or test paths inside the sdist (test/orm/...)")
    parser.add_argument("--jobs", type=int, default=1, help="pytest-xdist workers (needs pytest-xdist)")
    parser.add_argument("--scratch", type=Path, default=Path(os.environ.get("SA_SUITE_SCRATCH", REPO / ".sa_suite")))
    parser.add_argument("--only", choices=("direct", "isolation", "none"),
                        help="run one side (or none: just compare) and reuse the other's JUnit XML")
    parser.add_argument("--check", action="store_true", help="exit 1 below the bar or on an unexplained difference")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    sdist = sdist_dir(scratch)
    paths = [p for name in args.subset for p in SUBSETS.get(name, [name])]
    backend = Backend(args.backend, scratch, sdist)
    print(f"SQLAlchemy {sa.__version__} test suite, {args.backend}, {' '.join(paths)}", flush=True)
    try:
        xmls = {}
        for mode in ("direct", "isolation"):
            if args.only and args.only != mode:
                xmls[mode] = scratch / f"{mode}-{backend.name}.xml"
                continue
            xmls[mode] = run_suite(mode, backend, sdist, paths, scratch, args.jobs, args.pytest_args)
    finally:
        backend.drop()
    direct, isolated = outcomes(xmls["direct"]), outcomes(xmls["isolation"])
    report = compare(direct, isolated, load_expected(), args.backend, paths)
    report.update(backend=args.backend, paths=paths, sqlalchemy=sa.__version__,
                  direct_total=len(direct), isolated_total=len(isolated))
    out = scratch / f"result-{args.backend}.json"
    out.write_text(json.dumps(report, indent=2))

    print(f"tests collected: {len(direct)} direct, {len(isolated)} through isolation")
    print(f"passing directly:          {report['direct_passed']}")
    print(f"passing through isolation: {report['isolated_passed']}")
    print(f"passing directly and through isolation: {report['both_passed']} ({100 * report['ratio']:.2f} %)")
    for title, key, groups in (("pass directly, fail through isolation", "lost", "groups"),
                               ("pass through isolation, fail directly", "gained", "gained_groups")):
        print(f"{title}: {len(report[key])}")  # type: ignore[arg-type]
        for group, tests in report[groups].items():  # type: ignore[attr-defined]
            print(f"  [{len(tests)}] {group}")
            for test_id in tests[:5]:
                print(f"      {test_id}")
            if len(tests) > 5:
                print(f"      ... {len(tests) - 5} more")
    skipped = report["skipped_directly_pass_isolated"]
    print(f"skipped directly, pass through isolation (reported, not a failure): {len(skipped)}")  # type: ignore[arg-type]
    for test_id in skipped[:10]:  # type: ignore[index]
        print(f"  {test_id}")
    unexplained = [*report["unexplained"], *report["unexplained_gained"]]  # type: ignore[misc]
    print(f"unexplained differences (not in {EXPECTED.name}): {len(unexplained)}")
    for test_id in unexplained:
        print(f"  {test_id}")
    print(f"stale entries in {EXPECTED.name} for {args.backend}: {len(report['stale'])}")  # type: ignore[arg-type]
    for entry, why in report["stale"].items():  # type: ignore[attr-defined]
        print(f"  {entry}  ({why})")
    print(f"patterns matching no difference on {args.backend} (reported, not a failure): "
          f"{len(report['unmatched_patterns'])}")  # type: ignore[arg-type]
    for entry in report["unmatched_patterns"]:  # type: ignore[attr-defined]
        print(f"  {entry}")
    print(f"result: {out}")
    if args.check:
        subset = args.subset[0] if len(args.subset) == 1 and args.subset[0] in SUBSETS else None
        failures = check_failures(report, len(direct), args.backend, subset, enforce_stale=not args.pytest_args)
        if failures:
            for failure in failures:
                print(f"FAILED: {failure}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
