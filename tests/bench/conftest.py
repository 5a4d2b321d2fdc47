from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_checkpoint)
