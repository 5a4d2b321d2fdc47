"""Run one Python step of the pipeline in a fresh process: how a runner executes a step elsewhere.

    python -m llm_deploy.cli build_engine --spec-json '{...}' --inputs-json '[{checkpoint record}]'

The docker runner starts this inside a container (the local runner can run it as a subprocess),
so a step that is plain Python on the worker runs unchanged in an image that carries llm_deploy.
Inputs are the upstream steps' XCom records, the spec is the run's validated DeploySpec; neither
holds a secret. The Hugging Face token comes only from the ``HF_TOKEN`` environment variable.

The step's logging goes to stderr. The very last line on stdout is the outcome, one JSON object
after ``OUTCOME_MARKER``: ``{"status": "ok", "result": {...}}`` or ``{"status": "skip" |
"non_retryable" | "failed", "error": "..."}``, so the caller maps it back onto the same
exceptions the step would have raised in-process. The exit code says the same for tools that
only see codes (0 ok, 3 non-retryable, 4 skip, 1 any other failure).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OUTCOME_MARKER = "::llm-deploy-outcome::"
HF_TOKEN_ENV = "HF_TOKEN"
EXIT_CODES = {"ok": 0, "failed": 1, "non_retryable": 3, "skip": 4}


@dataclass(frozen=True)
class CliStep:
    target: str  # "module:function" of the step
    takes_token: bool = False  # download_weights: the token is its second argument
    takes_run_id: bool = False  # the run id is its last argument


STEPS: dict[str, CliStep] = {
    "download_weights": CliStep("llm_deploy.steps.download_weights:download_weights", takes_token=True),
    "build_wheel": CliStep("llm_deploy.steps.build_wheel:build_wheel"),
    "build_engine": CliStep("llm_deploy.steps.build_engine:build_engine"),
    "verify_engine": CliStep("llm_deploy.steps.verify_engine:verify_engine"),
    "render_model_repo": CliStep("llm_deploy.steps.render_model_repo:render_model_repo"),
    "benchmark": CliStep("llm_deploy.steps.benchmark:benchmark", takes_run_id=True),
}


def outcome_line(status: str, *, result: Any = None, error: str | None = None) -> str:
    body: dict[str, Any] = {"status": status}
    if status == "ok":
        body["result"] = result
    else:
        body["error"] = error
    return OUTCOME_MARKER + json.dumps(body, default=str)


def parse_outcome(lines: list[str]) -> dict[str, Any] | None:
    """The last outcome line of a step's output, or None when the step never wrote one."""
    for line in reversed(lines):
        start = line.find(OUTCOME_MARKER)
        if start >= 0:
            return json.loads(line[start + len(OUTCOME_MARKER):])
    return None


def run(step_name: str, spec_json: str, inputs: list[Any], run_id: str | None) -> tuple[str, Any]:
    """Call the step; return (status, result or error message)."""
    from llm_deploy.errors import NonRetryableError, SkipStep
    from llm_deploy.spec import DeploySpec, SpecError

    step = STEPS[step_name]
    try:
        spec = DeploySpec.from_params(json.loads(spec_json))
        function = _load(step.target)
        args: list[Any] = [spec]
        if step.takes_token:
            args.append(os.environ.get(HF_TOKEN_ENV) or None)
        args.extend(inputs)
        if step.takes_run_id:
            if not run_id:
                raise NonRetryableError(f"{step_name} needs --run-id")
            args.append(run_id)
        result = function(*args)
    except SkipStep as exc:
        return "skip", str(exc)
    except (NonRetryableError, SpecError) as exc:
        return "non_retryable", str(exc)
    except Exception as exc:  # noqa: BLE001 - every other failure is reported, and may be retried
        logging.getLogger(__name__).exception("%s failed", step_name)
        return "failed", f"{type(exc).__name__}: {exc}"
    return "ok", result.to_xcom() if hasattr(result, "to_xcom") else result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_deploy.cli", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--spec-json", required=True, help="the run's DeploySpec as JSON")
    parser.add_argument("--inputs-json", default="[]", help="JSON list of upstream records, in the step's order")
    parser.add_argument("--run-id", default=None, help="the Airflow run id (steps that write run reports)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    status, value = run(args.step, args.spec_json, json.loads(args.inputs_json), args.run_id)
    sys.stderr.flush()
    # One write, so the line cannot interleave with anything else in the container's log stream.
    sys.stdout.write(outcome_line(status, result=value if status == "ok" else None,
                                  error=None if status == "ok" else value) + "\n")
    sys.stdout.flush()
    return EXIT_CODES[status]


def load_step(name: str) -> Callable[..., Any]:
    """The step function behind a CLI step name (the same one the worker calls in-process)."""
    return _load(STEPS[name].target)


def _load(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


if __name__ == "__main__":
    sys.exit(main())
