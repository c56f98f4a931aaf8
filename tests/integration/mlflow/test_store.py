"""MLflow's ``SqlAlchemyStore`` on the isolation engine URL (SQLite), against a direct twin.

The same store operations - experiments, runs, metrics, params, tags, searches with filters and
ordering, dataset inputs, logged models, traces - run on a store built on ``sqlite:///...`` and
on one built on ``sqlite+dbsession://...`` (the DB-API in its own process serving the twin file,
``alembic_version`` served for MLflow's schema check). Outcomes (values, types, exception
classes) and then every table must be identical. MLflow's schema is created by MLflow itself on
both files first (migrations are trusted).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbsession import guard
from tests.servers import dbapi_process

START = 1_767_225_600_000  # 2026-01-01, milliseconds
_HEX_ID = re.compile(r"[0-9a-f]{32}|(tr|m)-[0-9a-f]{32}")
TALLY: dict[str, bool] = {}


def comparable(value: Any) -> Any:
    """*value* with its types; generated ids and clock readings masked."""
    now_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
    if isinstance(value, bool) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, int) and abs(value - now_ms) < 7_200_000:
        return ("int", "<now>")
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    if isinstance(value, (int, float, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, str):
        return ("str", _HEX_ID.sub("<id>", value))
    if isinstance(value, dict):
        return (type(value).__name__, {str(comparable(k)): comparable(v) for k, v in value.items()})
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [comparable(v) for v in value]
        return (type(value).__name__, sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items)
    if hasattr(value, "to_dictionary"):
        return (type(value).__name__, comparable(value.to_dictionary()))
    if hasattr(value, "to_dict"):
        return (type(value).__name__, comparable(value.to_dict()))
    if hasattr(value, "__dict__"):
        return (type(value).__name__, comparable({k: v for k, v in vars(value).items() if not k.startswith("__")}))
    return (type(value).__name__, repr(value))


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("returned", comparable(call()))
    except Exception as exc:  # the exception class is the outcome
        return ("raised", f"{type(exc).__module__}.{type(exc).__qualname__}", getattr(exc, "error_code", None))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("mlflow")
    files = {"direct": root / "direct.db", "isolated": root / "isolated.db"}
    with guard.trusted():
        artifacts = (root / "artifacts").as_uri()  # the same artifact root: only the database differs
        for path in files.values():  # MLflow creates and migrates its schema: trusted
            SqlAlchemyStore(f"sqlite:///{path}", artifacts).engine.dispose()
        direct = SqlAlchemyStore(f"sqlite:///{files['direct']}", artifacts)
    with dbapi_process(f"sqlite:///{files['isolated']}", "tests.integration.mlflow.served:metadata",
                       env={"DBAPI_EXTRA_TABLES": "alembic_version",
                            # what MLflow runs every session with: the DB-API's connections run it
                            "DBAPI_SQLITE_PRAGMAS": '{"foreign_keys": "ON", "busy_timeout": 20000, '
                                                    '"case_sensitive_like": "true"}'}) as server:
        import dbsession

        dbsession.configure(token=server.token)  # what DATABASE_API_TOKEN(_FILE) gives a worker
        try:
            isolated = SqlAlchemyStore(f"sqlite+dbsession://127.0.0.1:{server.port}/", artifacts)
            yield {"direct": direct, "isolated": isolated, "files": files}
        finally:
            dbsession.reset_configuration()
    print(f"\nmlflow differential: {sum(TALLY.values())}/{len(TALLY)} identical"
          + "".join(f"\n  DIFFERS: {name}" for name, ok in TALLY.items() if not ok))


class Both:
    def __init__(self, stores: dict[str, Any]) -> None:
        self.stores = stores
        self.values: dict[str, dict[str, Any]] = {"direct": {}, "isolated": {}}
        self.raised: set[str] = set()

    def __call__(self, name: str, op: Callable[[Any, dict[str, Any]], Any], keep: str | None = None) -> Any:
        results = {}
        for side in ("direct", "isolated"):
            def call(side: str = side) -> Any:
                value = op(self.stores[side], self.values[side])
                if keep is not None:
                    self.values[side][keep] = value
                return value
            results[side] = outcome(call)
        TALLY[name] = results["direct"] == results["isolated"]
        if results["direct"][0] == "raised":
            self.raised.add(name)
        assert results["isolated"] == results["direct"], f"{name}:\n isolated {results['isolated']}\n direct   {results['direct']}"


def _tables(path: Path) -> dict[str, list[str]]:
    with guard.trusted():
        engine = sa.create_engine(f"sqlite:///{path}")
        try:
            names = sa.inspect(engine).get_table_names()
            with engine.connect() as conn:
                return {name: sorted(repr(comparable(dict(row))) for row in
                                     conn.execute(sa.text(f'SELECT * FROM "{name}"')).mappings())
                        for name in names}
        finally:
            engine.dispose()


def test_tracking_store(stores: dict[str, Any]) -> None:
    from mlflow.entities import ExperimentTag, LoggedModelTag, Metric, Param, RunStatus, RunTag, ViewType
    from mlflow.entities.dataset import Dataset
    from mlflow.entities.dataset_input import DatasetInput
    from mlflow.entities.input_tag import InputTag

    both = Both(stores)
    both("search_experiments (default)", lambda s, v: s.search_experiments())
    both("create_experiment", lambda s, v: s.create_experiment("exp-a", tags=[ExperimentTag("team", "ml")]),
         keep="exp")
    both("create_experiment duplicate", lambda s, v: s.create_experiment("exp-a"))
    both("get_experiment_by_name", lambda s, v: s.get_experiment_by_name("exp-a"))
    both("get_experiment missing", lambda s, v: s.get_experiment("9999"))
    both("set_experiment_tag", lambda s, v: s.set_experiment_tag(v["exp"], ExperimentTag("stage", "dev")))
    both("search_experiments by tag", lambda s, v: s.search_experiments(filter_string="tag.team = 'ml'"))
    both("create_run", lambda s, v: s.create_run(v["exp"], "alice", START, [RunTag("kind", "train")], "r1"),
         keep="run")
    both("create_run 2", lambda s, v: s.create_run(v["exp"], "bob", START + 1000, [], "r2"), keep="run2")
    both("log_batch", lambda s, v: s.log_batch(
        v["run"].info.run_id, metrics=[Metric("loss", 0.5, START, 0), Metric("loss", 0.25, START + 1, 1),
                                       Metric("acc", float("nan"), START, 0), Metric("big", float("inf"), START, 0)],
        params=[Param("lr", "0.01"), Param("layers", "3")], tags=[RunTag("note", "é ü")]))
    both("log_metric run 2", lambda s, v: s.log_metric(v["run2"].info.run_id, Metric("loss", 0.75, START, 0)))
    both("log_param conflicting value", lambda s, v: s.log_param(v["run"].info.run_id, Param("lr", "0.02")))
    both("get_run", lambda s, v: s.get_run(v["run"].info.run_id))
    both("get_metric_history", lambda s, v: s.get_metric_history(v["run"].info.run_id, "loss"))
    both("search_runs metrics filter, order", lambda s, v: s.search_runs(
        [v["exp"]], "metrics.loss < 1", ViewType.ALL, order_by=["metrics.loss DESC"]))
    both("search_runs params and tags", lambda s, v: s.search_runs(
        [v["exp"]], "params.lr = '0.01' and tags.kind LIKE 'tr%'", ViewType.ACTIVE_ONLY))
    both("search_runs attributes", lambda s, v: s.search_runs(
        [v["exp"]], "attributes.status = 'RUNNING' and attributes.run_name ILIKE 'R%'", ViewType.ALL,
        order_by=["attributes.start_time ASC"]))
    both("search_runs bad filter", lambda s, v: s.search_runs([v["exp"]], "metrics.loss <<< 1", ViewType.ALL))
    both("update_run_info", lambda s, v: s.update_run_info(v["run2"].info.run_id, RunStatus.FINISHED,
                                                             START + 5000, "r2-done"))
    both("set_tag / delete_tag", lambda s, v: (s.set_tag(v["run"].info.run_id, RunTag("tmp", "1")),
                                                s.delete_tag(v["run"].info.run_id, "tmp")))
    both("delete_tag missing", lambda s, v: s.delete_tag(v["run"].info.run_id, "nope"))
    both("log_inputs", lambda s, v: s.log_inputs(v["run"].info.run_id, datasets=[DatasetInput(
        Dataset("train", "abc123", "local", '{"uri": "file:///data"}', '{"cols": 3}', '{"rows": 10}'),
        [InputTag("mlflow.data.context", "training")])]))
    both("get_run with inputs", lambda s, v: s.get_run(v["run"].info.run_id).inputs)
    both("delete_run / search DELETED_ONLY", lambda s, v: (s.delete_run(v["run2"].info.run_id),
                                                           s.search_runs([v["exp"]], "", ViewType.DELETED_ONLY)))
    both("restore_run", lambda s, v: s.restore_run(v["run2"].info.run_id))
    both("create_logged_model", lambda s, v: s.create_logged_model(
        v["exp"], "model-a", v["run"].info.run_id, tags=[LoggedModelTag("k", "v")], model_type="sklearn"),
         keep="model")
    both("search_logged_models", lambda s, v: s.search_logged_models([v["exp"]]))
    both("rename_experiment", lambda s, v: s.rename_experiment(v["exp"], "exp-b"))
    both("delete / restore experiment", lambda s, v: (s.delete_experiment(v["exp"]),
                                                      s.search_experiments(view_type=ViewType.DELETED_ONLY),
                                                      s.restore_experiment(v["exp"])))

    # the operations really ran: only these raise, on both sides (MLflow's own MlflowException)
    assert both.raised == {"create_experiment duplicate", "get_experiment missing", "log_param conflicting value",
                           "search_runs bad filter", "delete_tag missing"}, both.raised
    direct, isolated = _tables(stores["files"]["direct"]), _tables(stores["files"]["isolated"])
    diff = {t: (direct.get(t), isolated.get(t)) for t in set(direct) | set(isolated) if direct.get(t) != isolated.get(t)}
    TALLY["tables after the store operations"] = not diff
    assert not diff, diff
