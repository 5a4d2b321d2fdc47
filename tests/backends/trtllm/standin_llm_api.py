"""The stand-in wheel's ``tensorrt_llm.LLM`` and ``SamplingParams`` (the LLM API of 1.x).

Copied into each llmapi release's stand-in wheel with RECORD set to that release's recorded
argument set (tests/data/upstream/<release>/LLM.json). As the real pydantic arguments do, an
argument or a nested key the release does not have, or a value outside its choices, raises at
``LLM(...)``; a model that is not a Hugging Face checkpoint directory fails the load. Then
generate answers a deterministic text, one token id per word.
"""

import json
from pathlib import Path
from types import SimpleNamespace

RECORD = None  # set when the wheel is written


def _record():
    return json.loads(Path(RECORD).read_text())


class SamplingParams:
    def __init__(self, max_tokens=32, **others):
        unknown = set(others) - {"temperature", "top_k", "top_p", "seed", "exclude_input_from_output"}
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        self.max_tokens = max_tokens


class LLM:
    def __init__(self, **args):
        record = _record()
        unknown = sorted(set(args) - set(record["arguments"]))
        if unknown:
            raise ValueError(f"LLM(): extra inputs are not permitted: {unknown}")
        for name, keys in record["nested"].items():
            extra = sorted(set(args.get(name) or {}) - set(keys))
            if extra:
                raise ValueError(f"LLM(): {name}: extra inputs are not permitted: {extra}")
        for path, choices in record["choices"].items():
            value = args
            for part in path.split("."):
                value = (value or {}).get(part)
            if value is not None and value not in choices:
                raise ValueError(f"LLM(): {path}={value!r} is not one of {choices}")
        if not (Path(args["model"]) / "config.json").is_file():
            raise OSError(f"{args['model']} is not a Hugging Face checkpoint (no config.json)")
        self.args = args
        self.closed = False

    def generate(self, prompts, sampling_params=None):
        if self.closed:
            raise RuntimeError("LLM was shut down")
        limit = (sampling_params or SamplingParams()).max_tokens
        outputs = []
        for prompt in prompts:
            words = f"stand-in LLM API completion of {prompt}".split()[:limit]
            outputs.append(SimpleNamespace(prompt=prompt, outputs=[
                SimpleNamespace(text=" ".join(words), token_ids=list(range(len(words))))]))
        return outputs

    def shutdown(self):
        self.closed = True
