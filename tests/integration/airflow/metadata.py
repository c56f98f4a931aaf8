"""Airflow's ORM metadata with every model imported: what the DB-API serves (``DBAPI_METADATA``)."""

from __future__ import annotations

from airflow.models import import_all_models
from airflow.models.base import Base

import_all_models()
metadata = Base.metadata
