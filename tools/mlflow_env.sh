#!/usr/bin/env bash
# The MLflow integration environment: .venv-mlflow with mlflow 3.18 (its released code, nothing
# patched) and this checkout editable. Used by the CI step "MLflow on DBSession" (docs/airflow.md
# has the Airflow one; tests/integration/mlflow/test_store.py says what runs). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MLFLOW_VENV:-.venv-mlflow}
MLFLOW_SPEC=${MLFLOW_SPEC:-mlflow==3.18.*}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "$MLFLOW_SPEC" 'pytest>=8' 'pytest-timeout>=2.2' -e '.[async]' -e ./server
"$VENV/bin/python" -c "import mlflow, sqlalchemy; print('mlflow', mlflow.__version__, 'sqlalchemy', sqlalchemy.__version__)"
