"""Hold an argv against a flag set extracted from an upstream script.

Stricter than argparse on purpose: flags must be spelled out in full (argparse would also take a
unique prefix), and a flag may appear once. Checked: every flag exists in the script; every
required flag is there; a store_true-like flag gets no value; a flag with recorded choices gets
one of them; nothing is left over as a stray positional. The tests hold every generated argv
against the recorded flag sets (tests/data/upstream); the release watch's probe holds them against
the flag sets of a new release's scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_deploy.backends.trtllm.releases import TRTLLM_BUILD, Release


@dataclass(frozen=True)
class FlagSet:
    script: str
    record: dict[str, Any]

    @property
    def by_name(self) -> dict[str, dict[str, Any]]:
        return {name: flag for flag in self.record["flags"] for name in flag["names"]}

    @property
    def required(self) -> list[dict[str, Any]]:
        return [flag for flag in self.record["flags"] if flag["required"]]


def script_of(argv: list[str], release: Release) -> tuple[str, list[str]] | None:
    """Which recorded script an argv runs, and the arguments it passes to it (None: not an upstream script)."""
    args = list(argv)
    if args[:1] == ["mpirun"]:
        args = args[args.index("--allow-run-as-root") + 1:]
    if args[:1] == [TRTLLM_BUILD]:
        return TRTLLM_BUILD, args[1:]
    if args[:1] == ["python3"] and len(args) > 1:
        for key, path in release.scripts.items():
            if args[1].endswith("/" + path):
                return key, args[2:]
    return None


def problems(args: list[str], flag_set: FlagSet) -> list[str]:
    """Everything the recorded script would reject (or that we never mean to pass) in args."""
    found: list[str] = []
    known = flag_set.by_name
    given: set[str] = set()
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-"):
            found.append(f"stray positional {token!r} (the script takes no positional arguments here)")
            continue
        name, has_value, inline_value = token.partition("=")
        inline = inline_value if has_value else None
        flag = known.get(name)
        if flag is None:
            found.append(f"{name}: not a flag of {flag_set.script}")
            if inline is None and i < len(args) and not args[i].startswith("-"):
                i += 1  # its presumed value: one finding per unknown flag is enough
            continue
        if name in given or any(other in given for other in flag["names"]):
            found.append(f"{name}: given twice")
        given.add(name)
        if not flag["takes_value"]:
            if inline is not None:
                found.append(f"{name}: takes no value ({flag['action']}), got {inline!r}")
            continue
        values, i = _values(args, i, flag, inline)
        if not values and flag["nargs"] not in ("?", "*"):
            found.append(f"{name}: needs a value")
        if flag["choices"] is not None:
            allowed = [str(choice) for choice in flag["choices"]]
            found += [f"{name}: {value!r} is not one of {allowed}" for value in values if value not in allowed]
    for flag in flag_set.required:
        if not any(name in given for name in flag["names"]):
            found.append(f"{flag['names'][0]}: required by {flag_set.script}, missing")
    return found


def _values(args: list[str], i: int, flag: dict[str, Any], inline: str | None) -> tuple[list[str], int]:
    if inline is not None:
        return [inline], i
    nargs = flag["nargs"]
    if isinstance(nargs, int):
        return args[i:i + nargs], i + nargs
    if nargs in ("+", "*"):
        end = i
        while end < len(args) and not args[end].startswith("--"):
            end += 1
        return args[i:end], end
    if nargs == "?":
        if i < len(args) and not args[i].startswith("-"):
            return [args[i]], i + 1
        return [], i
    if i < len(args):
        return [args[i]], i + 1
    return [], i
