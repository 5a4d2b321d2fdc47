import subprocess
import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def airflow_db():
    """DagBag reads and writes Airflow's metadata DB: migrate the test AIRFLOW_HOME's SQLite once."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
