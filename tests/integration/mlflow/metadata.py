"""MLflow's ORM metadata with every store model imported: what the DB-API serves (``DBAPI_METADATA``)."""

from __future__ import annotations

import importlib
import pkgutil

import mlflow.store
from mlflow.store.db.base_sql_model import Base

for _module in pkgutil.walk_packages(mlflow.store.__path__, "mlflow.store."):
    if _module.name.endswith("dbmodels.models"):
        importlib.import_module(_module.name)

metadata = Base.metadata
