"""Import cycles in plugins/llm_deploy, function-local and TYPE_CHECKING imports included (they
only hide a cycle from the interpreter). There are none, and none may be added. Count them with:
python -m tests.support.import_graph"""

from tests.support.import_graph import cycles, import_graph


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_function_local_import_is_found(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
                     "pkg/b.py": "def late():\n    from pkg.a import thing\n"})
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b"]]


def test_a_package_whose_init_imports_its_modules_is_part_of_their_cycles(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/sub/__init__.py": "from pkg.sub.x import X\n",
                     "pkg/sub/x.py": "from pkg.y import Y\n", "pkg/y.py": "from pkg.sub.z import Z\n",
                     "pkg/sub/z.py": ""})
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.sub", "pkg.sub.x", "pkg.y"]]


def test_relative_imports_and_a_module_importing_its_own_package_make_no_cycle(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "from . import a\n", "pkg/a.py": "from . import b\nimport pkg\n",
                     "pkg/b.py": "from .c import C\n", "pkg/c.py": ""})
    assert cycles(import_graph(tmp_path, "pkg")) == []
