"""One click from a run's grid to its report: extra links on the tasks that write reports.

Airflow 3 shows a task's extra links as buttons on the task instance's page. A TaskFlow task has
them when its operator class declares them, so ``benchmark_task`` and ``comparison_task`` are
``@task`` with an operator class that does. When the task ends, Airflow asks the link for its URL
(in the task's process) and keeps it in XCom for the UI; the URL comes from the task's own
result: the report it wrote. A task that wrote none (it failed before) links to the view's
list of reports, filtered to its run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode

from airflow.providers.common.compat.sdk import XCom, task_decorator_factory
from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import BaseOperatorLink
from llm_deploy.ui import PREFIX


def view_url(path: str) -> str:
    """A page of the report view, under the api-server's base_url when one is configured."""
    from airflow.sdk import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}{PREFIX}{path}"


def report_page(report_path: str) -> str:
    """The view's page of a benchmark report: its directory's last two names under runs/."""
    engine_hash, run = PurePosixPath(report_path).parts[-3:-1]
    return view_url(f"/reports/{quote(engine_hash)}/{quote(run)}")


def _result(ti_key: Any) -> dict:
    value = XCom.get_value(ti_key=ti_key, key="return_value")
    return value if isinstance(value, dict) else {}


class BenchmarkReportLink(BaseOperatorLink):
    name = "Benchmark report"

    def get_link(self, operator, *, ti_key) -> str:
        path = _result(ti_key).get("report_path")
        if path:
            return report_page(path)
        return view_url("/?" + urlencode({"run_id": ti_key.run_id}) + "#reports")


class ComparisonLink(BaseOperatorLink):
    name = "Config comparison"

    def get_link(self, operator, *, ti_key) -> str:
        path = _result(ti_key).get("table_path")
        if path:
            return view_url(f"/matrix/{quote(PurePosixPath(path).parent.name)}")
        return view_url("/#matrices")


class _BenchmarkTaskOperator(_PythonDecoratedOperator):
    operator_extra_links = (BenchmarkReportLink(),)


class _ComparisonTaskOperator(_PythonDecoratedOperator):
    operator_extra_links = (ComparisonLink(),)


def benchmark_task(python_callable: Callable | None = None, **kwargs: Any):
    """``@task`` for a task that returns a benchmark summary (``report_path``)."""
    return task_decorator_factory(python_callable=python_callable,
                                  decorated_operator_class=_BenchmarkTaskOperator, **kwargs)


def comparison_task(python_callable: Callable | None = None, **kwargs: Any):
    """``@task`` for a task that returns a config-matrix comparison (``table_path``)."""
    return task_decorator_factory(python_callable=python_callable,
                                  decorated_operator_class=_ComparisonTaskOperator, **kwargs)
