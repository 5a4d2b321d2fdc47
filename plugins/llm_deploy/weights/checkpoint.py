"""What makes a directory a Hugging Face checkpoint, and how its files are listed in messages."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llm_deploy.errors import NonRetryableError

CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_LISTED_FILES = 30


def require_checkpoint(names: Iterable[str], *, where: str, others: Iterable[str] = ()) -> None:
    """config.json and at least one weights file, or a non-retryable error listing what is there."""
    names = sorted(names)
    missing = []
    if CONFIG_FILE not in names:
        missing.append(CONFIG_FILE)
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        missing.append("weights (*.safetensors or *.bin)")
    if not missing:
        return
    message = f"{where} is not a Hugging Face checkpoint: no {' and no '.join(missing)}; found: {listing(names)}"
    others = sorted(others)
    if others:
        message += f"; not selected by hf_allow_patterns: {listing(others)}"
    raise NonRetryableError(message)


def files_under(root: Path, skip_top: tuple[str, ...] = ()) -> list[Path]:
    """Every file below root, sorted, leaving out the top-level entries named in skip_top."""
    return [
        path for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] not in skip_top
    ]


def top_level_names(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file()]


def listing(names: Iterable[str]) -> str:
    """The first few names, comma-separated: a repo can hold thousands of files."""
    names = list(names)
    shown = ", ".join(names[:_LISTED_FILES]) or "nothing"
    return shown + (f", ... ({len(names) - _LISTED_FILES} more)" if len(names) > _LISTED_FILES else "")
