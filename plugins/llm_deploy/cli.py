"""Run one Python step of the pipeline in a fresh process: how a runner executes a step elsewhere.

    python -m llm_deploy.cli build_engine --spec-json '{...}' --inputs-json '[{checkpoint record}]'

The docker runner starts this inside a container (the local runner can run it as a subprocess),
so a step that is plain Python on the worker runs unchanged in an image that carries llm_deploy.
Inputs are the upstream steps' XCom records, the spec is the run's validated DeploySpec; neither
holds a secret. The Hugging Face token comes only from the ``HF_TOKEN`` environment variable, a
guarded server's admin key only from ``LLM_DEPLOY_TRITON_ADMIN_KEY``.

The step's logging goes to stderr. The very last line on stdout is the outcome, one JSON object
after ``OUTCOME_MARKER``: ``{"status": "ok", "result": {...}}`` or ``{"status": "skip" |
"non_retryable" | "failed", "error": "..."}``, so the caller maps it back onto the same
exceptions the step would have raised in-process. The exit code says the same for tools that
only see codes (``llm_deploy.errors.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from llm_deploy.errors import EXIT_CODES, Outcome, outcome_of
from llm_deploy.steps.registry import STEPS

OUTCOME_MARKER = "::llm-deploy-outcome::"
HF_TOKEN_ENV = "HF_TOKEN"


def outcome_line(status: Outcome, *, result: Any = None, error: str | None = None) -> str:
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


def run(step_name: str, spec_json: str, inputs: list[Any], run_id: str | None) -> tuple[Outcome, Any]:
    """Call the step; return (status, result or error message)."""
    from llm_deploy.records import to_xcom
    from llm_deploy.server.admin_guard import key_from_environ
    from llm_deploy.spec import DeploySpec

    try:
        spec = DeploySpec.from_params(json.loads(spec_json))
        result = STEPS[step_name].call(spec, inputs, token=os.environ.get(HF_TOKEN_ENV) or None, run_id=run_id,
                                       admin_key_for=key_from_environ)
    except Exception as exc:  # noqa: BLE001 - every failure is reported; the outcome says whether to retry
        status = outcome_of(exc)
        if status == "failed":
            logging.getLogger(__name__).exception("%s failed", step_name)
            return status, f"{type(exc).__name__}: {exc}"
        return status, str(exc)
    return "ok", to_xcom(result)


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


if __name__ == "__main__":
    sys.exit(main())
