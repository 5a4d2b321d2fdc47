"""docker/build_torch_image.py: what names the image, so that reuse is safe and rebuilds are rare."""

from __future__ import annotations

import importlib.util
import io
import re
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_recipe():
    spec = importlib.util.spec_from_file_location("build_torch_image", REPO / "docker" / "build_torch_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line.strip())
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_the_image_pins_what_the_worker_pins():
    image, worker = pins(REPO / "docker" / "torch-image-requirements.txt"), pins(REPO / "requirements.txt")
    shared = set(image) & set(worker)
    assert {"torch", "transformers", "numpy"} <= shared
    assert {name: image[name] for name in shared} == {name: worker[name] for name in shared}


def test_the_base_tag_follows_the_requirements_and_the_code_tag_follows_the_code(tmp_path, monkeypatch):
    recipe = load_recipe()
    base = recipe.base_tag()
    assert base == recipe.base_tag() and base.startswith("llm-deploy-torch-base:")
    tag = recipe.image_tag(base)
    assert tag.startswith(f"llm-deploy-torch:{base.partition(':')[2]}-")

    other = tmp_path / "requirements.txt"
    other.write_text(recipe.REQUIREMENTS.read_text() + "tqdm==4.70.1\n")
    monkeypatch.setattr(recipe, "REQUIREMENTS", other)
    assert recipe.base_tag() != base

    monkeypatch.setattr(recipe, "code_files", lambda: [])
    assert recipe.image_tag(base) != tag


def test_the_code_layer_puts_plugins_on_the_images_python_path():
    recipe = load_recipe()
    with tarfile.open(fileobj=io.BytesIO(recipe.code_archive())) as tar:
        names = set(tar.getnames())
        pth = tar.extractfile(f"{recipe.SITE_PACKAGES}/llm_deploy.pth").read().decode()
    assert "opt/llm-deploy/plugins/llm_deploy/cli.py" in names
    assert any(name.startswith("opt/llm-deploy/include/templates/") for name in names)
    assert not any("__pycache__" in name for name in names)
    assert pth.strip() == "/opt/llm-deploy/plugins"


def test_the_debian_mirror_comes_from_apts_own_sources(tmp_path, monkeypatch):
    recipe = load_recipe()
    monkeypatch.setenv("LLM_DEPLOY_DEBIAN_MIRROR", "http://mirror.example/debian")
    assert recipe.debian_mirror() == "http://mirror.example/debian"
