"""What a person watching ``airflow dags test deploy_llm`` needs to see, read from its output.

``airflow dags test`` writes Airflow's whole console log: task runner internals, API calls and a
traceback per failed try. The quick start pipes that log through ``follow`` and shows only our
steps' progress lines and, per task, when it starts, how it ends and, for a failed try, the
error's message and when Airflow tries it again. ``failures`` reads the same facts back from the
saved log for the quick start's closing summary, with a hint for the errors that have a known
remedy.

The lines recognised are those that Airflow 3's ``dag.test`` and task runner write:
``[DAG TEST] starting task_id=X``, ``Task failed with exception`` followed by a traceback whose
last line is the exception, ``Task instance state updated ... new_state=S``, and
``[DAG TEST] end task task_id=X``.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+)")
_END = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+)")
_FAILED = re.compile(r"Task failed with exception|\[DAG TEST\] Error running task")
_STATE = re.compile(r"Task instance state updated .*new_state=(?P<state>\w+)")
# Every log record starts with its UTC timestamp, e.g. 2026-12-02T04:30:20.811032Z.
_LOG_LINE = re.compile(r"^(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
_SKIPPED = re.compile(r"\[info\s*\] skipped: (?P<why>.*?)\s+\[llm_deploy")
# The exception a traceback ends with, at the start of a line: "pkg.module.SomeError: message"
# or a bare name. Traceback's own headers ("Traceback (most recent call last):", "The above
# exception was ...:") have spaces before their colon, and its frames are indented.
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")
# Our own steps' log lines (logger names under llm_deploy), shown as they come.
_OURS = re.compile(r"\[(?:info|warning|error)\s*\] (?P<text>.*?)\s+\[llm_deploy[\w.]*\]")
_AIRFLOW_WRAPPERS = ("airflow.sdk.exceptions.AirflowFailException", "AirflowFailException",
                     "airflow.sdk.exceptions.AirflowException", "AirflowException")

# The Hub could not be reached at all (DNS, no route, refused, a proxy that is not there).
_HUB_UNREACHABLE = re.compile(
    r"ConnectError|ConnectionError|ConnectTimeout|Name or service not known|Temporary failure in name "
    r"resolution|Failed to resolve|nodename nor servname|Network is unreachable|No route to host|"
    r"LocalEntryNotFoundError|offline mode is enabled", re.IGNORECASE)


@dataclass
class TaskTry:
    task_id: str
    try_number: int
    state: str = "running"
    error: str = ""


@dataclass
class DagTestLog:
    """Reads ``airflow dags test`` output line by line; ``feed`` returns the lines to show."""

    next_try_at: Callable[[str, int], datetime | None] = lambda task_id, try_number: None
    tries: list[TaskTry] = field(default_factory=list)
    _current: TaskTry | None = None
    _in_traceback: bool = False
    _in_message: bool = False  # the exception's message goes on over indented lines
    _at: datetime | None = None

    # A traceback outside any task: `airflow dags test` itself gave up, e.g. on params the DAG
    # refuses (ParamValidationError), before it created a run.
    refusal: TaskTry | None = None

    def feed(self, line: str) -> list[str]:
        line = line.rstrip("\n")
        if stamp := _LOG_LINE.match(line):
            self._at = datetime.fromisoformat(stamp["at"]).replace(tzinfo=timezone.utc)
        if match := _START.search(line):
            task = match["task"]
            self._current = TaskTry(task, 1 + sum(t.task_id == task for t in self.tries))
            self.tries.append(self._current)
            again = f" (try {self._current.try_number})" if self._current.try_number > 1 else ""
            return [f"[{self._clock()}] {task}: started{again}"]
        current = self._current
        if current is None and line.startswith("Traceback (most recent call last):"):
            self.refusal = TaskTry("airflow dags test", 0, state="refused")
            self._in_traceback = True
            return []
        if _FAILED.search(line):
            self._in_traceback = True
            return []
        target = current or self.refusal
        if self._in_traceback and target and not _LOG_LINE.match(line):
            # A chained traceback shows the cause first: the last exception line is the one raised.
            if match := _EXCEPTION.match(line):
                target.error = _message(match["type"], match["msg"] or "")
                self._in_message = True
            elif self._in_message and line.startswith(" "):
                target.error += "\n" + line  # e.g. a SpecError's one line per bad param
            else:
                self._in_message = False
            return []
        self._in_traceback = self._in_message = False
        if current is None:
            return []
        if match := _SKIPPED.search(line):
            current.error = match["why"]
            return []
        if match := _STATE.search(line):
            current.state = match["state"]
            return []
        if _END.search(line):
            self._current = None
            return self._ended(current)
        if match := _OURS.search(line):
            return [f"  {match['text']}"]
        return []

    def _ended(self, done: TaskTry) -> list[str]:
        if done.state == "up_for_retry":
            when = self.next_try_at(done.task_id, done.try_number)
            retry = "Airflow retries it"
            if when:
                retry += f" at {when:%H:%M:%S} UTC"
                if self._at:
                    retry += f" (in {max(0, (when - self._at).total_seconds()):.0f} s)"
            shown = [f"[{self._clock()}] {done.task_id}: try {done.try_number} failed: {done.error or 'see the log'}",
                     f"  {retry}"]
            hint = hint_for(done.error)
            if hint and done.try_number == 1:  # once is enough; the summary repeats it
                shown.append(f"  hint: {hint}")
            return shown
        if done.state == "failed":
            return [f"[{self._clock()}] {done.task_id}: FAILED: {done.error or 'see the log'}"]
        if done.state == "skipped" and done.error:
            return [f"[{self._clock()}] {done.task_id}: skipped ({done.error})"]
        return [f"[{self._clock()}] {done.task_id}: {done.state}"]

    def _clock(self) -> str:
        return f"{self._at or datetime.now(timezone.utc):%H:%M:%S}"

    def failed(self) -> list[TaskTry]:
        """The last try of every task whose last try failed, in the order they ran."""
        last = {t.task_id: t for t in self.tries}
        return [t for t in last.values() if t.state == "failed"]


def hint_for(error: str) -> str:
    """What to do about an error whose remedy is known; empty when the message says it all."""
    if "huggingface" in error.lower() or "could not download" in error or "Hub" in error:
        if _HUB_UNREACHABLE.search(error):
            return ("the Hugging Face Hub is not reachable from this machine: set HF_ENDPOINT to a Hub "
                    "mirror it can reach, or HF_HUB_OFFLINE=1 to use only what the HF cache already holds, "
                    "or copy the checkpoint onto the engines volume and run with "
                    '{"model_source": "local", "model_local_dir": "<dir under engines_root>"}')
    return ""


def read_log(log_path: Path) -> DagTestLog:
    """A saved ``airflow dags test`` log, read back: ``failed()`` and ``refusal`` for a summary."""
    reader = DagTestLog()
    with open(log_path, errors="replace") as log:
        for line in log:
            reader.feed(line)
    return reader


def failures(log_path: Path) -> list[TaskTry]:
    """The failed tasks of the run a saved ``airflow dags test`` log shows."""
    return read_log(log_path).failed()


def follow(lines: Iterable[str], out: TextIO, *, reader: DagTestLog | None = None) -> DagTestLog:
    reader = reader or DagTestLog(next_try_at=next_try_from_db)
    for line in lines:
        for shown in reader.feed(line):
            print(shown, file=out, flush=True)
    return reader


def next_try_from_db(task_id: str, try_number: int, dag_id: str = "deploy_llm") -> datetime | None:
    """When the scheduler loop of ``dags test`` runs the failed task again, from Airflow's DB.

    Airflow's own rule (TaskInstance.next_retry_datetime: backoff with a per-task jitter) on the
    serialized task, so the time shown is the one the run will keep. None when it cannot be read.
    """
    # Airflow's deprecation warnings (logged on import and on reading a DAG) would land on the screen.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from airflow.models.dagbag import DBDagBag
            from airflow.models.taskinstance import TaskInstance
            from airflow.utils.session import create_session

            with create_session() as session:
                ti = (session.query(TaskInstance)
                      .filter(TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                              TaskInstance.state == "up_for_retry")
                      .order_by(TaskInstance.end_date.desc()).first())
                if ti is None:
                    return None
                ti.task = DBDagBag().get_dag_for_run(ti.dag_run, session=session).get_task(task_id)
                return ti.next_retry_datetime()
        except Exception:  # noqa: BLE001 - a missing time only makes the line shorter
            return None


def _message(exc_type: str, msg: str) -> str:
    # Our task wrappers raise AirflowFailException("Kind: message"): the wrapper's name says
    # nothing to the reader, the kind and message do.
    if exc_type in _AIRFLOW_WRAPPERS:
        return msg
    return f"{exc_type.rsplit('.', 1)[-1]}: {msg}" if msg else exc_type


def _lines(stream: TextIO) -> Iterator[str]:
    yield from iter(stream.readline, "")


if __name__ == "__main__":
    follow(_lines(sys.stdin), sys.stdout)
