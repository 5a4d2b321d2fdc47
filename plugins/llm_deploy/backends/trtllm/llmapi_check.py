"""The llmapi flow's "check it with run.py": the LLM API's generate on the Hugging Face checkpoint.

Run where TensorRT-LLM runs (the release's NGC image), where llm_deploy is not installed, so it
imports only the standard library and tensorrt_llm and travels as the source of a ``python3 -c``
(``source()``). Its arguments: the LLM() arguments as JSON (``llm_args``, the same ones the
served model.yaml holds), the prompt, the number of tokens to generate. It prints one line,
``RESULT_PREFIX`` + JSON {"text", "token_ids", "seconds"}, which the verify step reads.

Greedy: no temperature, top_k or top_p is given, so the LLM API decodes greedily, as run.py does.
"""

from __future__ import annotations

import json
import sys
import time

RESULT_PREFIX = "llm_deploy.llmapi_check: "


def source() -> str:
    """This module's code, for ``python3 -c`` (``__main__`` below runs it)."""
    with open(__file__, encoding="utf-8") as handle:
        return handle.read()


def main(argv: list[str]) -> int:
    from tensorrt_llm import LLM, SamplingParams

    args, prompt, max_tokens = json.loads(argv[0]), argv[1], int(argv[2])
    print(f"loading {args['model']} with the LLM API ({args.get('backend')} backend, "
          f"tensor parallel {args.get('tensor_parallel_size')})", flush=True)
    llm = LLM(**args)
    try:
        started = time.perf_counter()
        output = llm.generate([prompt], SamplingParams(max_tokens=max_tokens))[0]
        seconds = time.perf_counter() - started
    finally:
        llm.shutdown()
    completion = output.outputs[0]
    print(RESULT_PREFIX + json.dumps({"text": completion.text, "token_ids": list(completion.token_ids),
                                      "seconds": round(seconds, 3)}), flush=True)
    return 0


# The LLM API starts its workers as new processes: guarded, as upstream's examples say it must be.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
