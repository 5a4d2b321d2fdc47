"""Hold the generated argv against the flag sets recorded from upstream scripts (tests/data/upstream).

The checking itself is ``llm_deploy.backends.trtllm.flag_check`` (the release watch's probe uses it
too); here: reading the recorded files and checking whole command lists of a table release.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_deploy.backends.trtllm.flag_check import FlagSet, problems, script_of
from llm_deploy.backends.trtllm.releases import RELEASES

__all__ = ["DATA", "FlagSet", "check_commands", "load_flag_set", "problems", "script_of"]

DATA = Path(__file__).resolve().parents[2] / "data" / "upstream"


def load_flag_set(release: str, script: str) -> FlagSet:
    return FlagSet(script, json.loads((DATA / release / f"{script}.json").read_text()))


def check_commands(commands: list[list[str]], release_name: str) -> list[str]:
    """Problems of every upstream-script argv in commands, prefixed with the script's name."""
    release = RELEASES[release_name]
    found = []
    for argv in commands:
        target = script_of(argv, release)
        if target is None:
            continue
        script, args = target
        found += [f"{script}: {problem}" for problem in problems(args, load_flag_set(release_name, script))]
    return found
