"""A small DAG for the Airflow integration tests: TaskFlow tasks, a classic operator, a schedule."""

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

with DAG("etl", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), schedule="@daily", catchup=False,
         tags=["integration"], default_args={"retries": 1}) as dag:

    @task
    def extract() -> dict[str, int]:
        return {"rows": 3}

    @task
    def load(data: dict[str, int]) -> None:
        print(data)

    load(extract()) >> EmptyOperator(task_id="done")
