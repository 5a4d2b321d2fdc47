"""trtllm's "check the engine with run.py": the tutorial's check as it is.

run.py on the tutorial's prompt must print an output text (an engine that generates nothing
fails the step). In the llmapi flow there is no engine: the LLM API's generate runs on the
checkpoint with the arguments the server will load (``llmapi_check``) and must answer a text.
"""

from __future__ import annotations

import json
import logging
import re
import time

from llm_deploy.backends.trtllm import commands, llmapi_check, validation
from llm_deploy.backends.trtllm.execution import paths_for, preflight, run_commands, runner, wheel_prefix
from llm_deploy.errors import NonRetryableError
from llm_deploy.records import VerifyRecord
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 1800
# run.py prints `Output: "..."` (0.5.0) or `Output [Text 0 Beam 0]: "..."` (current releases).
_RUN_PY_OUTPUT = re.compile(r'^Output(?: \[[^\]]*\])?: "(.*)"\s*$')


def verify_engine(spec: DeploySpec, engine: dict, checkpoint: dict) -> VerifyRecord:
    from transformers import AutoTokenizer

    on = runner(spec)
    preflight(spec, on, "verify_engine")
    validation.check_engine_world_size(spec, engine["engine_dir"])
    paths = paths_for(spec, hf_checkpoint_dir=checkpoint["checkpoint_dir"], engine_dir=engine["engine_dir"])
    started = time.perf_counter()
    lines = run_commands(on, spec, "verify_engine", wheel_prefix(spec) + commands.verify_engine(spec, paths),
                         writes=[], timeout_s=VERIFY_TIMEOUT_S, gpu=True)
    seconds = time.perf_counter() - started
    outputs = [m.group(1) for line in lines if (m := _RUN_PY_OUTPUT.match(line.strip()))]
    if not outputs or not outputs[0].strip():
        raise NonRetryableError(
            f"run.py printed no output text for {TUTORIAL_PROMPT!r} (an engine that generates nothing); "
            f"last lines: {lines[-10:]}"
        )
    text = outputs[0]
    tokens = len(AutoTokenizer.from_pretrained(checkpoint["checkpoint_dir"])(text, add_special_tokens=False)["input_ids"])
    log.info("prompt: %s", TUTORIAL_PROMPT)
    log.info("run.py output (%d tokens, %.2fs): %s", tokens, seconds, text)
    return VerifyRecord(engine["engine_dir"], TUTORIAL_PROMPT, text, tokens, round(seconds, 3), 0.0)


def verify_checkpoint(spec: DeploySpec, checkpoint: dict) -> VerifyRecord:
    """llmapi flow: LLM(**llm_args).generate on the tutorial's prompt must answer some text."""
    on = runner(spec)
    preflight(spec, on, "verify_engine")
    paths = paths_for(spec, hf_checkpoint_dir=checkpoint["checkpoint_dir"])
    started = time.perf_counter()
    lines = run_commands(on, spec, "verify_engine", wheel_prefix(spec) + commands.verify_engine(spec, paths),
                         writes=[], timeout_s=VERIFY_TIMEOUT_S, gpu=True)
    seconds = time.perf_counter() - started
    results = [json.loads(line.strip()[len(llmapi_check.RESULT_PREFIX):]) for line in lines
               if line.strip().startswith(llmapi_check.RESULT_PREFIX)]
    if not results or not results[-1]["text"].strip():
        raise NonRetryableError(
            f"the LLM API generated no text for {TUTORIAL_PROMPT!r} from {checkpoint['checkpoint_dir']}; "
            f"last lines: {lines[-10:]}"
        )
    result = results[-1]
    log.info("prompt: %s", TUTORIAL_PROMPT)
    log.info("LLM API output (%d tokens, %.2fs generating, %.2fs with the model load): %s",
             len(result["token_ids"]), result["seconds"], seconds, result["text"])
    return VerifyRecord(checkpoint["checkpoint_dir"], TUTORIAL_PROMPT, result["text"], len(result["token_ids"]),
                        round(seconds, 3), 0.0)
