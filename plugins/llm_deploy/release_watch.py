"""Notice new TensorRT-LLM releases and decide whether to rebuild.

Two sources, both plain JSON over HTTP so that a mirror or a local fixture can stand in:
PyPI's JSON API for the ``tensorrt_llm`` wheel, and a releases feed for the backend (GitHub's
``/repos/<owner>/<repo>/releases/latest`` shape by default, its URL configurable).

What was last acted on is kept in a small state file on the engines volume, written atomically,
so a second tick with nothing new does nothing, and a release this version of llm-deploy has no
command table for is reported once instead of triggering a run that could only fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

PYPI_JSON = "https://pypi.org/pypi/{package}/json"
GITHUB_LATEST = "https://api.github.com/repos/triton-inference-server/tensorrtllm_backend/releases/latest"
# The feeds the watch DAG reads by default: a site behind a mirror of PyPI or of GitHub's API
# (or a test serving local feeds) sets these, as LLM_DEPLOY_ENGINES_ROOT sets the volume.
DEFAULT_PYPI_JSON = os.environ.get("LLM_DEPLOY_PYPI_JSON_URL") or PYPI_JSON
DEFAULT_BACKEND_RELEASES = os.environ.get("LLM_DEPLOY_BACKEND_RELEASES_URL") or GITHUB_LATEST
# Where the release probe reads NVIDIA/TensorRT-LLM's files at a tag, and the tag's commit
# (backends/trtllm/release_probe.py); here so the DAG's params do not import the probe at parse.
TRTLLM_RAW_FILES = "https://raw.githubusercontent.com/NVIDIA/TensorRT-LLM/{ref}/{path}"
TRTLLM_COMMIT_API = "https://api.github.com/repos/NVIDIA/TensorRT-LLM/commits/{ref}"
DEFAULT_TRTLLM_RAW_FILES = os.environ.get("LLM_DEPLOY_TRTLLM_RAW_URL") or TRTLLM_RAW_FILES
DEFAULT_TRTLLM_COMMIT_API = os.environ.get("LLM_DEPLOY_TRTLLM_COMMIT_URL") or TRTLLM_COMMIT_API
STATE_FILE = "release_watch.json"
_VERSION = re.compile(r"^v?(\d+(\.\d+){1,3}([a-z]+\d*)?)$")


class ReleaseFeedError(RuntimeError):
    """A release source answered with something that is not a release (retry later)."""


@dataclass(frozen=True)
class Latest:
    tensorrt_llm: str
    tensorrtllm_backend: str


@dataclass(frozen=True)
class Decision:
    release: str | None  # the release to deploy, or None when there is nothing to do
    reason: str
    latest: Latest
    unsupported: bool = False  # upstream published a release we have no command table for
    probe: bool = False  # ...and the probe should see whether the newest row still fits it


def normalise(tag: str) -> str:
    """'v0.5.0' and '0.5.0' are one release; anything else is refused."""
    match = _VERSION.match(tag.strip())
    if not match:
        raise ReleaseFeedError(f"{tag!r} is not a release version")
    return match.group(1)


def latest_wheel(package: str = "tensorrt_llm", url: str | None = None, timeout_s: float = 20) -> str:
    response = httpx.get((url or PYPI_JSON).format(package=package), timeout=timeout_s, follow_redirects=True)
    response.raise_for_status()
    return normalise(str(response.json()["info"]["version"]))


def latest_backend(url: str = GITHUB_LATEST, timeout_s: float = 20) -> str:
    response = httpx.get(url, timeout=timeout_s, follow_redirects=True,
                         headers={"Accept": "application/vnd.github+json"})
    response.raise_for_status()
    return normalise(str(response.json()["tag_name"]))


def decide(latest: Latest, state: dict, supported: tuple[str, ...], *, probe: bool = False) -> Decision:
    """Deploy the newest tensorrt_llm release on the package index when it is new to us and we
    know how to build it. The wheel's version names the release: from 0.20 the Triton backend is
    TensorRT-LLM's own, and the backend repository no longer tags every release (1.1 and 1.2 are
    commits on its branches), so its feed is kept for the record only.

    ``supported``: the table's releases and those derived onto the volume. With ``probe``, a new
    release outside them is handed to the release probe (which derives its row or reports why
    not) instead of being only reported; either way it is reported once."""
    release = latest.tensorrt_llm
    if state.get("deployed") == release:
        return Decision(None, f"release {release} was already deployed", latest)
    if release not in supported:
        if state.get("unsupported_seen") == release:
            return Decision(None, f"release {release} is still not in the release table", latest)
        if probe:
            return Decision(None, f"new release {release} is not in llm-deploy's release table "
                                  f"({', '.join(supported)}); probing upstream's files at v{release}",
                            latest, unsupported=True, probe=True)
        return Decision(None, f"new release {release} is not in llm-deploy's release table "
                              f"({', '.join(supported)}); add its row to build it", latest, unsupported=True)
    return Decision(release, f"new release {release} (tensorrtllm_backend's latest tag: "
                             f"{latest.tensorrtllm_backend})", latest)


def load_state(root: Path) -> dict:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}


def record_check(root: Path, decision: Decision) -> dict:
    """Remember what the feeds said, and an unsupported release so it is reported only once."""
    state = load_state(root)
    state["latest"] = asdict(decision.latest)
    if decision.unsupported and not decision.probe:  # a probed one is recorded by its verdict
        state["unsupported_seen"] = decision.latest.tensorrt_llm
    return _write_state(root, state)


def record_incompatible(root: Path, release: str, findings: list[str]) -> dict:
    """The probe found the release changed what our commands use: report it once, keep why."""
    state = load_state(root)
    state["unsupported_seen"] = release
    state["incompatible"] = {"release": release, "findings": findings}
    return _write_state(root, state)


def record_deployed(root: Path, release: str) -> dict:
    """Called only after deploy_llm was triggered, so a failed trigger is retried next tick."""
    state = load_state(root)
    state["deployed"] = release
    return _write_state(root, state)


def _write_state(root: Path, state: dict) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    path = root / STATE_FILE
    scratch = path.with_suffix(f".tmp-{os.getpid()}")
    scratch.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(scratch, path)  # atomic: a crash leaves the old state, never half a file
    return state
