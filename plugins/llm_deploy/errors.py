"""Exceptions a step raises to tell its Airflow wrapper what to do next.

Steps are plain Python; the wrappers in ``llm_deploy.airflow.tasks`` translate these: a
NonRetryableError becomes AirflowFailException (no retry storm for bad input, a gated repo or a
port in use), SkipStep becomes AirflowSkipException, and any other error is retried with backoff.
"""


class StepError(Exception):
    """A step failed for a reason that a retry may fix (network, a busy GPU, a flaky server)."""


class NonRetryableError(StepError):
    """A step failed for a reason that retrying cannot fix; the message says what to change."""


class SkipStep(Exception):  # noqa: N818 - reads as an instruction at the raise site
    """The step has nothing to do for this spec; the message says why (shown in the task log)."""


class BackendNotAvailable(NonRetryableError):
    """The selected backend cannot run this step on this worker."""
