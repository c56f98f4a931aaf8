#!/usr/bin/env bash
# The Airflow 3 integration environment: .venv-airflow with apache-airflow 3.3 (its own released
# code, nothing patched), this checkout editable (client and server) and the test tools.
# Used by the CI step "Airflow 3 on DBSession" (docs/airflow.md); idempotent, quick when present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${AIRFLOW_VENV:-.venv-airflow}
AIRFLOW_SPEC=${AIRFLOW_SPEC:-apache-airflow==3.3.*}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Airflow publishes constraint files on GitHub (not a package registry), so pip resolves from
# PyPI; psycopg 3 is the driver of the PostgreSQL URLs here (postgresql+psycopg://).
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "$AIRFLOW_SPEC" 'psycopg[binary]>=3.1' 'pytest>=8' 'pytest-timeout>=2.2' \
    -e '.[async]' -e ./server
"$VENV/bin/python" -c "import airflow, sqlalchemy; print('airflow', airflow.__version__, 'sqlalchemy', sqlalchemy.__version__)"
