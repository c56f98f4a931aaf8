"""A second DAG file: mapped tasks and params."""

import pendulum
from airflow.sdk import DAG, Param, task

with DAG("reports", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), schedule=None,
         params={"region": Param("eu", type="string")}, tags=["integration", "reports"]) as dag:

    @task
    def regions() -> list[str]:
        return ["eu", "us"]

    @task
    def render(region: str) -> str:
        return region.upper()

    render.expand(region=regions())
