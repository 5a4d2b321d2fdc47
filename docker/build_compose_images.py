#!/usr/bin/env python3
"""Build the docker-compose stack's images on a machine that reaches no registry.

    python docker/build_compose_images.py               # prints the compose variables:
    LLM_DEPLOY_POSTGRES_IMAGE=llm-deploy-postgres:…
    LLM_DEPLOY_REDIS_IMAGE=llm-deploy-redis:…
    LLM_DEPLOY_AIRFLOW_BASE_IMAGE=llm-deploy-airflow-base:…
    LLM_DEPLOY_AIRFLOW_IMAGE=llm-deploy-airflow:…

With a registry, ``docker compose up`` pulls postgres:16, redis:7.2 and apache/airflow:3.3.2 and
builds docker/airflow.Dockerfile on the last. Here, stand-ins are built from Debian's packages,
each named by the hash of what it is made of, so a second run only looks them up:

1. ``llm-deploy-debian:<hash>``: one ``debootstrap`` of Debian bookworm with python3, PostgreSQL
   15, Redis 7, curl, dumb-init and Open MPI (mpirun, for world_size > 1), shared by the three
   images below as their first layer.
2. ``llm-deploy-postgres`` and ``llm-deploy-redis``: that layer plus an entrypoint
   (docker/standin/postgres-entrypoint.sh) or a config file (docker/standin/redis.conf) that
   keep the official images' contract: POSTGRES_USER/PASSWORD/DB, listening on the network.
3. ``llm-deploy-airflow-packages``: Airflow and every pin of requirements.txt and
   docker/standin/airflow-image-requirements.txt, installed by this interpreter's pip (the build
   containers reach no index, so the Dockerfile's pip install finds them satisfied); then
   ``llm-deploy-airflow-base``, standing in for apache/airflow:3.3.2-python3.11: the official
   image's user (airflow, uid 50000, gid 0), AIRFLOW_HOME, and its /entrypoint contract
   (docker/standin/airflow-entrypoint.sh), a layer of seconds on the slow one.
4. ``llm-deploy-airflow``: docker/airflow.Dockerfile itself, built on that base
   (``AIRFLOW_BASE_IMAGE``), exactly as compose would build it on the official one.

How these differ from the official images: Debian's python3 (3.11.2) instead of the python.org
build, PostgreSQL 15 instead of 16, Redis 7.0 instead of 7.2, only the providers this project
uses, and entrypoints that carry over just the variables docker-compose.yaml sets. A cold build
takes several minutes on 2 cores; older tags are removed after a build.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_images import (  # noqa: E402 - a script beside its helpers, not a package
    REPO_ROOT, SITE_PACKAGES, SUITE, Archive, add_layer, build_lock, content_hash, debootstrap,
    directory_archive, files_hash, image_exists, import_rootfs, log, pip_target, prune,
    python_version_check, read_back, run, tree_files,
)

STANDIN = REPO_ROOT / "docker" / "standin"
DOCKERFILE = "docker/airflow.Dockerfile"
# Bump when the recipe changes in a way the inputs below do not show.
RECIPE_VERSION = "1"
DEBIAN_PACKAGES = ("python3", "python-is-python3", "libpython3.11", "ca-certificates", "curl", "dumb-init",
                   "postgresql-15", "redis-server", "openmpi-bin")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AIRFLOW_UID = 50000
AIRFLOW_HOME = "/opt/airflow"
AIRFLOW_USER_HOME = "/home/airflow"
AIRFLOW_PIP_REQUIREMENTS = (REPO_ROOT / "requirements.txt", STANDIN / "airflow-image-requirements.txt")
MODEL_REQUIREMENTS = REPO_ROOT / "requirements-model.txt"
# What docker/airflow.Dockerfile copies in (COPY lines), besides itself.
DOCKERFILE_INPUTS = ("requirements.txt", "requirements-model.txt", "pyproject.toml", "docker/init_connections.py")
DOCKERFILE_TREES = ("plugins", "include")


def _standin(name: str) -> str:
    return (STANDIN / name).read_text()


# --- names -----------------------------------------------------------------------------------


def os_tag() -> str:
    return f"llm-deploy-debian:{content_hash(RECIPE_VERSION, SUITE, ','.join(DEBIAN_PACKAGES))}"


def postgres_tag(os_image: str) -> str:
    return f"llm-deploy-postgres:{content_hash(os_image, _standin('postgres-entrypoint.sh'))}"


def redis_tag(os_image: str) -> str:
    return f"llm-deploy-redis:{content_hash(os_image, _standin('redis.conf'))}"


def airflow_packages_tag(os_image: str) -> str:
    inputs = [path.read_text() for path in (*AIRFLOW_PIP_REQUIREMENTS, MODEL_REQUIREMENTS)]
    return f"llm-deploy-airflow-packages:{content_hash(os_image, f'owner {AIRFLOW_UID}', *inputs)}"


def airflow_base_tag(packages: str) -> str:
    return f"llm-deploy-airflow-base:{content_hash(packages, _standin('airflow-entrypoint.sh'))}"


def airflow_tag(base: str) -> str:
    files = [REPO_ROOT / DOCKERFILE, *(REPO_ROOT / name for name in DOCKERFILE_INPUTS),
             *tree_files(REPO_ROOT, *DOCKERFILE_TREES)]
    # <base hash>-<code hash>: which base an image sits on shows in its name (see ensure_images).
    return f"llm-deploy-airflow:{base.partition(':')[2]}-{files_hash(REPO_ROOT, files)}"


# --- the images --------------------------------------------------------------------------------


def build_os(client, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="llm-deploy-rootfs-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        debootstrap(rootfs, DEBIAN_PACKAGES)
        # Packages' postinst scripts made a cluster and a socket dir the images do not use.
        run(["rm", "-rf", str(rootfs / "var/lib/postgresql/15"), str(rootfs / "etc/postgresql/15")])
        # Debian marks its python3 as apt's alone (PEP 668), and pip would refuse the
        # Dockerfile's `pip install` steps; the official images' Python carries no such mark.
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        import_rootfs(client, rootfs, tag, changes=[f"ENV PATH={PATH}"])


def build_postgres(client, os_image: str, tag: str) -> None:
    layer = Archive().file("/usr/local/bin/docker-entrypoint.sh", _standin("postgres-entrypoint.sh"), mode=0o755)
    add_layer(client, os_image, tag, layer.bytes(), changes=[
        "ENV PGDATA=/var/lib/postgresql/data",
        f"ENV PATH=/usr/lib/postgresql/15/bin:{PATH}",
        'ENTRYPOINT ["docker-entrypoint.sh"]', 'CMD ["postgres"]',
        "EXPOSE 5432"])


def build_redis(client, os_image: str, tag: str) -> None:
    layer = Archive().file("/etc/redis/compose.conf", _standin("redis.conf"))
    add_layer(client, os_image, tag, layer.bytes(), changes=[
        "USER redis", "WORKDIR /var/lib/redis",
        'ENTRYPOINT []', 'CMD ["redis-server", "/etc/redis/compose.conf"]', "EXPOSE 6379"])


def build_airflow_packages(client, os_image: str, tag: str) -> None:
    """The slow layer: Airflow and every pin, installed by this interpreter's pip."""
    python_version_check()
    with tempfile.TemporaryDirectory(prefix="llm-deploy-airflow-", dir="/var/tmp") as scratch:
        stage = Path(scratch)
        site = stage / SITE_PACKAGES
        log("pip install Airflow and the pinned requirements into the layer (a few minutes cold)")
        pip_target(site, *(arg for path in AIRFLOW_PIP_REQUIREMENTS for arg in ("-r", str(path))))
        # --upgrade: a second --target install into the same directory otherwise skips, not merges.
        pip_target(site, "--no-deps", "--upgrade", "-r", str(MODEL_REQUIREMENTS))
        _move_console_scripts(site / "bin", stage / "usr/local/bin")
        # Owned by the airflow user, as the official image's pip --user installs are: the
        # Dockerfile's RUN, as that user, puts the python-backend stub into nvidia-pytriton's package.
        add_layer(client, os_image, tag, directory_archive(stage, uid=AIRFLOW_UID))


def build_airflow_base(client, os_image: str, packages: str, tag: str) -> None:
    """The official image's user, home, entrypoint and settings, on the packages."""
    passwd = read_back(client, os_image, "/etc/passwd")
    user = f"airflow:x:{AIRFLOW_UID}:0:Airflow:{AIRFLOW_USER_HOME}:/bin/bash\n"
    layer = (Archive()
             .file("/etc/passwd", passwd + user)
             .file("/entrypoint", _standin("airflow-entrypoint.sh"), mode=0o755)
             .directory(AIRFLOW_USER_HOME, mode=0o775, uid=AIRFLOW_UID)
             .directory(AIRFLOW_HOME, mode=0o775, uid=AIRFLOW_UID))
    add_layer(client, packages, tag, layer.bytes(), changes=[
        f"ENV AIRFLOW_HOME={AIRFLOW_HOME}", f"ENV AIRFLOW_USER_HOME_DIR={AIRFLOW_USER_HOME}",
        f"ENV PATH={AIRFLOW_USER_HOME}/.local/bin:{PATH}",
        # As in the official image: the Dockerfile's pip installs go to ~airflow/.local.
        "ENV PIP_USER=true", "ENV PYTHONUNBUFFERED=1",
        f"USER {AIRFLOW_UID}", f"WORKDIR {AIRFLOW_HOME}",
        'ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]', "CMD []", "EXPOSE 8080"])


def _move_console_scripts(source: Path, target: Path) -> None:
    """pip --target writes scripts that start this interpreter; the image's is /usr/bin/python3."""
    target.mkdir(parents=True, exist_ok=True)
    for script in sorted(source.iterdir()) if source.is_dir() else []:
        if script.is_file():
            first, _, rest = script.read_bytes().partition(b"\n")
            if first.startswith(b"#!") and b"python" in first:
                (target / script.name).write_bytes(b"#!/usr/bin/python3\n" + rest)
                (target / script.name).chmod(0o755)
    shutil.rmtree(source, ignore_errors=True)


def build_airflow(client, base: str, tag: str) -> None:
    """docker/airflow.Dockerfile on the stand-in base, through the daemon's own builder."""
    log(f"docker build -f {DOCKERFILE} --build-arg AIRFLOW_BASE_IMAGE={base} -> {tag}")
    output = client.api.build(path=str(REPO_ROOT), dockerfile=DOCKERFILE, tag=tag, rm=True, forcerm=True,
                              buildargs={"AIRFLOW_BASE_IMAGE": base}, decode=True)
    lines = []
    for chunk in output:
        if "error" in chunk:
            raise SystemExit(f"docker build failed: {chunk['error']}\n{''.join(lines[-40:])}")
        lines.append(chunk.get("stream", ""))
    if not image_exists(client, tag):
        raise SystemExit(f"docker build produced no {tag}:\n{''.join(lines[-40:])}")


def ensure_images(client) -> dict[str, str]:
    """Build what is missing; return the compose variables naming each image."""
    with build_lock("llm-deploy-compose-images"):
        os_image = os_tag()
        packages = airflow_packages_tag(os_image)
        base = airflow_base_tag(packages)
        airflow, postgres, redis = airflow_tag(base), postgres_tag(os_image), redis_tag(os_image)
        steps = [(os_image, lambda: build_os(client, os_image)),
                 (postgres, lambda: build_postgres(client, os_image, postgres)),
                 (redis, lambda: build_redis(client, os_image, redis)),
                 (packages, lambda: build_airflow_packages(client, os_image, packages)),
                 (base, lambda: build_airflow_base(client, os_image, packages, base)),
                 (airflow, lambda: build_airflow(client, base, airflow))]
        for tag, build in steps:
            if image_exists(client, tag):
                log(f"reusing {tag}")
            else:
                build()
        # The Airflow image is rebuilt on every code change (seconds, on a cached base): keep a
        # day of those on the current base for other checkouts that share this daemon; the rest,
        # and every image on an old base (2.5 GB each), go. Children before their parents.
        on_old_base = lambda tag: not tag.partition(":")[2].startswith(base.partition(":")[2] + "-")  # noqa: E731
        for tag, _ in reversed(steps):
            if tag == airflow:
                prune(client, "llm-deploy-airflow", keep=[tag], min_age_s=86400, also=on_old_base)
            else:
                prune(client, tag.partition(":")[0], keep=[tag])
        return {"LLM_DEPLOY_POSTGRES_IMAGE": postgres, "LLM_DEPLOY_REDIS_IMAGE": redis,
                "LLM_DEPLOY_AIRFLOW_BASE_IMAGE": base, "LLM_DEPLOY_AIRFLOW_IMAGE": airflow}


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import docker

    for name, tag in ensure_images(docker.from_env(timeout=600)).items():
        print(f"{name}={tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
