"""Images for a Docker engine that reaches no registry: Debian rootfs imports and layers on them.

What the build scripts beside this file share (``build_torch_image.py``, ``build_compose_images.py``):

- every image is named by a hash of what it is made of (a *content tag*), so building what
  already exists is a lookup, and a changed input is a new name, never a stale image;
- the operating system comes from ``debootstrap`` with the Debian archive this machine's apt
  uses, ``docker import``-ed as one layer;
- Python packages are installed by *this* interpreter's pip with ``--target`` (same Python minor,
  same index settings, cache and local wheels as the worker's venv), because containers here
  reach no package index; the directory is then added as a layer with ``put_archive`` + commit;
- builds take a lock file, so two checkouts (or test sessions) sharing one daemon wait for one
  build instead of each spending minutes on the same one.

Needs root (debootstrap), ``debootstrap`` and a running dockerd, reached through the docker SDK
(DOCKER_HOST or the default socket).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"  # its python3 is 3.11, the Python our pins are for
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"  # on Debian python3's sys.path


def log(message: str) -> None:
    print(f"{Path(sys.argv[0]).stem}: {message}", file=sys.stderr, flush=True)


def content_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return digest.hexdigest()[:12]


def files_hash(root: Path, files: Iterable[Path]) -> str:
    """Names and bytes of ``files`` (paths relative to ``root`` in the hash, so a move counts)."""
    return content_hash(*(f"{path.relative_to(root)}\0".encode() + path.read_bytes() for path in files))


def tree_files(root: Path, *tops: str) -> list[Path]:
    """Every file under ``root/<top>``, sorted, without bytecode."""
    found = []
    for top in tops:
        found += [p for p in sorted((root / top).rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")]
    return found


def image_exists(client, tag: str) -> bool:
    return bool(client.images.list(name=tag))


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    with open(f"/var/tmp/{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the operating system ----------------------------------------------------------------------


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


def debootstrap(rootfs: Path, packages: Iterable[str]) -> None:
    """A minbase Debian of ``SUITE`` with ``packages``, without apt's caches."""
    if not shutil.which("debootstrap"):
        raise SystemExit("debootstrap is not installed: apt-get install debootstrap")
    mirror = debian_mirror()
    log(f"debootstrap {SUITE} from {mirror} (a minute or two)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(rootfs), mirror])
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / leftover, ignore_errors=True)


def import_rootfs(client, rootfs: Path, tag: str, changes: Iterable[str] = ()) -> None:
    log(f"docker import -> {tag}")
    repository, _, version = tag.partition(":")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    try:
        client.api.import_image_from_stream(tar.stdout, repository=repository, tag=version, changes=list(changes))
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise SystemExit("tar of the rootfs failed")


# --- layers ------------------------------------------------------------------------------------


def python_version_check() -> None:
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(f"run me with Python 3.11 (the images' python3), not {sys.version.split()[0]}")


def pip_target(target: Path, *args: str) -> None:
    """``pip install --target`` with this interpreter's settings (index, cache, local wheels)."""
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(target), *args])


def add_layer(client, base: str, tag: str, archive: bytes | Iterable[bytes], changes: Iterable[str] = ()) -> None:
    """``base`` plus the tar ``archive`` unpacked at /, committed as ``tag`` with Dockerfile ``changes``."""
    log(f"{base} + layer -> {tag}")
    # The container is never started; a command is needed only to create it, and becomes the
    # new image's CMD unless ``changes`` set one, so the base's own entrypoint and command stay.
    config = client.api.inspect_image(base)["Config"]
    placeholder = None if config.get("Entrypoint") or config.get("Cmd") else ["true"]
    container = client.api.create_container(base, command=placeholder)
    try:
        client.api.put_archive(container["Id"], "/", archive)
        repository, _, version = tag.partition(":")
        client.api.commit(container["Id"], repository=repository, tag=version, changes=list(changes))
    finally:
        client.api.remove_container(container["Id"], force=True)


def directory_archive(source: Path, *, uid: int = 0, gid: int = 0) -> Iterator[bytes]:
    """``source``'s contents as a tar stream for /, owned by ``uid:gid``, read as it streams."""
    tar = subprocess.Popen(["tar", "-C", str(source), f"--owner={uid}", f"--group={gid}", "--numeric-owner", "-c", "."],
                           stdout=subprocess.PIPE)
    try:
        while chunk := tar.stdout.read(1 << 20):
            yield chunk
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise SystemExit(f"tar of {source} failed")


class Archive:
    """A small tar built in memory: files and directories with their owner and mode."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w")

    def file(self, path: str, data: bytes | str, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Archive:
        data = data.encode() if isinstance(data, str) else data
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, int(time.time())
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def directory(self, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Archive:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, uid, gid, int(time.time())
        self._tar.addfile(info)
        return self

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def read_back(client, image: str, path: str) -> str:
    """A text file of ``image``, read without starting it."""
    container = client.api.create_container(image, entrypoint=["true"], command=[])
    try:
        stream, _ = client.api.get_archive(container["Id"], path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            return tar.extractfile(tar.getmembers()[0]).read().decode()
    finally:
        client.api.remove_container(container["Id"], force=True)


# --- housekeeping ------------------------------------------------------------------------------


def prune(client, repository: str, keep: Iterable[str], *, min_age_s: float = 0,
          also: Callable[[str], bool] = lambda tag: False) -> None:
    """Remove ``repository``'s tags other than ``keep`` that are older than ``min_age_s``, and
    those for which ``also(tag)`` holds whatever their age.

    Other checkouts on this machine may share the daemon: a young image may be another
    checkout's current one, so callers pass an age for images that cost seconds to rebuild.
    Tag by tag: one image may carry several (a rebuild from cache), and only the named go.
    """
    keep = set(keep)
    now = time.time()
    for image in client.images.list(name=repository):
        created = image.attrs.get("Created", "")
        age_s = now - unix_time(created) if created else 0
        for tag in image.tags:
            if tag.partition(":")[0] == repository and tag not in keep and (age_s >= min_age_s or also(tag)):
                remove(client, tag)


def remove(client, tag: str) -> None:
    try:
        client.images.remove(tag)
        log(f"removed old image {tag}")
    except Exception as exc:  # noqa: BLE001 - still used by a container or a child image: keep it
        log(f"kept old image {tag}: {exc}")


def unix_time(created: str) -> float:
    """Docker's RFC 3339 with nanoseconds, e.g. 2026-11-24T23:31:13.123456789Z."""
    return datetime.fromisoformat(created[:19]).replace(tzinfo=timezone.utc).timestamp()


def run(argv: list[str], **kwargs) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}):\n{result.stdout[-4000:]}")
