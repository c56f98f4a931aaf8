"""MLflow on dbsession: collected only where MLflow is installed (``tools/mlflow_env.sh``)."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("mlflow") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    import pytest

    for item in items:  # MLflow's own deprecation warnings are not this project's failures
        item.add_marker(pytest.mark.filterwarnings("default"))
