"""Tokenizer loading shared by the preprocessing and postprocessing models.

The renderer copies this file next to each model's model.py (Triton puts the model's version
directory on sys.path), so the models stay free of llm_deploy imports and run unchanged in the
NGC TensorRT-LLM image, where only transformers is available.
"""

from __future__ import annotations

from typing import Any


def load_tokenizer(tokenizer_dir: str, tokenizer_type: str = "auto") -> Any:
    """Load the tokenizer the way upstream's models and client do (left padding, pad = eos)."""
    import transformers

    if tokenizer_type == "auto":
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    elif tokenizer_type == "llama":
        tokenizer = transformers.LlamaTokenizer.from_pretrained(
            tokenizer_dir, legacy=False, padding_side="left"
        )
    elif tokenizer_type == "t5":
        tokenizer = transformers.T5Tokenizer(vocab_file=tokenizer_dir, padding_side="left")
    else:
        raise ValueError(f"unexpected tokenizer_type {tokenizer_type!r}; expected auto, llama or t5")
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
