"""Fixtures for the torch backend: a tiny random Llama (with GQA) saved as an HF checkpoint.

Helpers are handed out as fixtures (``hf_greedy``, ``collect``) rather than imported, because
several conftest modules share the name and this directory is not a package. The ``slow`` marker
is registered in pyproject.toml.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from llm_deploy.backends.torch.inflight import GenerationRequest

TINY_MAX_POSITIONS = 128


def tiny_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA: two query heads per KV head
        max_position_embeddings=TINY_MAX_POSITIONS,
        # Wide weights give logits clear winners, so greedy ties cannot hide behind rounding.
        initializer_range=0.2,
        tie_word_embeddings=False,
        # No EOS: HF generate must run to max_new_tokens, as the batcher does with end_id=None.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def save_tiny_model(directory: Path, seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides)).eval()
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("torch-tiny-llama")
    save_tiny_model(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_hf_model(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def _hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """What HF transformers generates greedily for ``prompt`` alone."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
        )
    return out[0, len(prompt):].tolist()


@dataclass
class Collector:
    """Gathers one request's callbacks so a test can wait for and inspect them."""

    request_id: str
    tokens: list[int] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def on_token(self, token: int) -> None:
        self.tokens.append(token)

    def on_done(self, error: str | None) -> None:
        self.errors.append(error)
        self.done.set()

    def request(self, prompt: list[int], max_new_tokens: int, end_id: int | None = None) -> GenerationRequest:
        return GenerationRequest(self.request_id, list(prompt), max_new_tokens, end_id, self.on_token, self.on_done)

    def wait(self, timeout: float = 30) -> Collector:
        assert self.done.wait(timeout), f"request {self.request_id} did not finish within {timeout}s"
        return self

    @property
    def error(self) -> str | None:
        assert len(self.errors) == 1, f"on_done called {len(self.errors)} times for {self.request_id}"
        return self.errors[0]


@pytest.fixture
def hf_greedy():
    """``hf_greedy(model, prompt, max_new_tokens)``: HF's greedy tokens for one prompt alone."""
    return _hf_greedy


@pytest.fixture
def collect():
    """``collect(request_id)``: a fresh Collector."""
    return Collector


@pytest.fixture
def make_checkpoint(tmp_path):
    """``make_checkpoint(**config_overrides)`` -> (checkpoint dir, the HF model saved there)."""
    made = 0

    def make(seed: int = 0, **overrides):
        nonlocal made
        made += 1
        directory = tmp_path / f"checkpoint-{made}"
        return directory, save_tiny_model(directory, seed=seed, **overrides)

    return make
