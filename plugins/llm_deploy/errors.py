"""Exceptions a step raises to say what should happen next, and the one table of step outcomes.

Steps are plain Python and know nothing of Airflow. Every caller that needs an outcome as data
(the step CLI's outcome line and exit code, a runner reading that line back, the Airflow task
wrapper in ``llm_deploy.airflow.tasks``) maps through ``outcome_of`` and ``raise_outcome`` here,
so "non-retryable" means the same thing in a worker, a container and a task log.
"""

from __future__ import annotations

from typing import Literal, NoReturn

Outcome = Literal["ok", "skip", "non_retryable", "failed"]


class StepError(Exception):
    """A step failed for a reason that a retry may fix (network, a busy GPU, a flaky server)."""


class NonRetryableError(StepError):
    """A step failed for a reason that retrying cannot fix; the message says what to change."""


class SkipStep(Exception):  # noqa: N818 - reads as an instruction at the raise site
    """The step has nothing to do for this spec; the message says why (shown in the task log)."""


class BackendNotAvailable(NonRetryableError):
    """The selected backend cannot run this step on this worker."""


# The exit codes of ``python -m llm_deploy.cli``, for tools that only see codes.
EXIT_CODES: dict[Outcome, int] = {"ok": 0, "failed": 1, "non_retryable": 3, "skip": 4}


def outcome_of(exc: BaseException) -> Outcome:
    """What a step's exception means for the caller: skip, fail at once, or fail and retry."""
    if isinstance(exc, SkipStep):
        return "skip"
    if isinstance(exc, NonRetryableError):
        return "non_retryable"
    return "failed"


def raise_outcome(outcome: Outcome, message: str) -> NoReturn:
    """Raise what the step raised where it ran, from its outcome as data (the reverse of outcome_of)."""
    if outcome == "skip":
        raise SkipStep(message)
    if outcome == "non_retryable":
        raise NonRetryableError(message)
    raise StepError(message)
