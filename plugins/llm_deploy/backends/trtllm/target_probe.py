"""What the release's image holds for an engine: tensorrt_llm's and TensorRT's versions and the GPUs.

Runs where upstream's commands run (the release's NGC image, through the spec's runner), where
llm_deploy is not installed, so it imports only the standard library and travels as the source
of a ``python3 -c`` (``source()``). It reads package metadata instead of importing tensorrt_llm,
which would initialise CUDA and take most of a minute. It prints one line, ``RESULT_PREFIX`` +
JSON {"tensorrt_llm", "tensorrt", "triton_image_version", "gpus": [[name, compute_cap], ...]}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

RESULT_PREFIX = "llm_deploy.target_probe: "


def source() -> str:
    """This module's code, for ``python3 -c`` (``__main__`` below runs it)."""
    with open(__file__, encoding="utf-8") as handle:
        return handle.read()


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _gpus() -> list[list[str]]:
    argv = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    # The local runner narrows a step to its GPUs with CUDA_VISIBLE_DEVICES, which nvidia-smi
    # does not read; its --id takes the same indices or UUIDs. In a container only its GPUs show.
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        argv.append("--id=" + os.environ["CUDA_VISIBLE_DEVICES"])
    try:
        answer = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return []
    if answer.returncode != 0:
        print(f"nvidia-smi failed ({answer.returncode}): {answer.stderr.strip()[-500:]}", flush=True)
        return []
    rows = []
    for line in answer.stdout.splitlines():
        name, _, cap = line.rpartition(",")
        if name.strip():
            rows.append([name.strip(), cap.strip()])
    return rows


def main() -> int:
    print(RESULT_PREFIX + json.dumps({
        "tensorrt_llm": _version("tensorrt_llm"),
        "tensorrt": _version("tensorrt"),
        # Set in every NGC Triton image (e.g. "26.04"): names the image a local worker runs in.
        "triton_image_version": os.environ.get("NVIDIA_TRITON_SERVER_VERSION", ""),
        "gpus": _gpus(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
