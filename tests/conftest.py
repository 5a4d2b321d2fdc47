"""Fixtures of general use: a tiny random-weight Llama checkpoint with its own tokenizer.

Built offline in about a second (no downloads): a byte-level BPE tokenizer trained on a few
sentences, wrapped as a transformers fast tokenizer with BOS/EOS, and a 2-layer Llama whose
vocabulary matches it. Its weights are random, so only comparisons between implementations are
meaningful (e.g. Triton's output against transformers' greedy generate()).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

TINY_CORPUS = [
    "How do I count to ten in French?",
    "Un, deux, trois, quatre, cinq, six, sept, huit, neuf, dix.",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning is a field of study in artificial intelligence.",
]
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def build_tiny_tokenizer(out_dir: Path):
    """Byte-level BPE on TINY_CORPUS; every token decodes to ASCII text on its own.

    No byte alphabet beyond the corpus is added, so streamed per-token text concatenates to
    exactly the text of the whole sequence (no half UTF-8 characters).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256, special_tokens=[UNK, BOS, EOS], show_progress=False)
    tokenizer.train_from_iterator(TINY_CORPUS * 4, trainer)
    # Llama-style: BOS in front of every prompt.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(out_dir: Path, *, vocab_size: int, bos_token_id: int, eos_token_id: int, seed: int = 0) -> None:
    """A 2-layer Llama (GQA, untied head) with random weights, saved as HF safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # Wide init: peaked logits, so greedy argmax has clear winners and float noise cannot flip it.
        initializer_range=0.5,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory) -> Path:
    """Directory with config.json, generation_config.json, model.safetensors and the tokenizer."""
    out_dir = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer(out_dir)
    build_tiny_llama(
        out_dir,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return out_dir


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# Every port handed out in this session. A port is free when it is probed, and the kernel may
# offer it again to the next probe: two sets asked for by one test (a run's server and its
# deployment's) once shared a port, and the run refused its own params.
_HANDED_OUT: set[int] = set()


def three_free_ports() -> dict[str, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        port = free_port()
        if port not in _HANDED_OUT:
            ports.add(port)
    _HANDED_OUT.update(ports)
    http, grpc, metrics = sorted(ports)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}


@pytest.fixture
def free_ports() -> dict[str, int]:
    """Three distinct free ports for tritonserver: {"http_port", "grpc_port", "metrics_port"}."""
    return three_free_ports()


@pytest.fixture(scope="session")
def free_ports_factory():
    """For wider-scoped fixtures: call it for a fresh {"http_port", "grpc_port", "metrics_port"}."""
    return three_free_ports


TINY_ENGINE_LIMITS = {"dtype": "float32", "max_batch_size": 4, "max_input_len": 64, "max_output_len": 32, "world_size": 1}


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_llama_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint as a torch-backend engine: its files plus engine_config.json."""
    import json
    import shutil

    engine_dir = tmp_path_factory.mktemp("tiny-engine")
    for path in tiny_llama_checkpoint.iterdir():
        shutil.copy2(path, engine_dir / path.name)
    (engine_dir / "engine_config.json").write_text(json.dumps({"backend": "torch", **TINY_ENGINE_LIMITS}))
    return engine_dir


@pytest.fixture(scope="session")
def tiny_llama_greedy(tiny_llama_checkpoint):
    """``tiny_llama_greedy(input_ids, max_new_tokens) -> new ids`` for the tiny checkpoint: transformers' greedy generate(), EOS dropped."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_checkpoint, dtype=torch.float32).eval()
    eos = model.config.eos_token_id

    def generate(input_ids: list[int], max_new_tokens: int) -> list[int]:
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([input_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=eos, pad_token_id=eos,
            )
        new = out[0, len(input_ids):].tolist()
        return new[: new.index(eos)] if eos in new else new

    return generate
