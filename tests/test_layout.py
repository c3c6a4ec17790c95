"""The package's import structure: the tuner stands alone (as a peft tuner would) and no module imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fpt_peft"
TUNER_MAY_IMPORT = {"torch", "peft", "transformers", "safetensors"}
# the adapter-file side the tuner's config calls on save and load (pure: it imports nothing of the tuner)
TUNER_HELPERS = {
    "fpt_peft.adapter_files",
    "fpt_peft.blocks",
    "fpt_peft.durable",
    "fpt_peft.loss",
    "fpt_peft.tuner_checks",
}
STANDARD_LIBRARY = {"__future__", "collections", "copy", "dataclasses", "enum", "functools", "hashlib", "inspect"}
STANDARD_LIBRARY |= {
    "json",
    "logging",
    "math",
    "os",
    "re",
    "tempfile",
    "typing",
    "warnings",
    "contextlib",
    "errno",
    "shutil",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports, wherever in the file (also inside functions)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import x` imports module x
    return names


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, leaving out its own parent packages (Python imports a package
    before any of its modules anyway, so `from . import x` is no edge back to the package)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {i for i in _imports(path) if i in modules and i != name and not name.startswith(i + ".")}
        for name, path in modules.items()
    }


def test_the_tuner_imports_only_torch_peft_transformers_safetensors_and_its_file_checks() -> None:
    helpers = [PACKAGE / f"{name.split('.')[-1]}.py" for name in TUNER_HELPERS]
    for path in sorted((PACKAGE / "tuner").glob("*.py")) + helpers:
        outside = {
            name
            for name in _imports(path)
            if not name.startswith(("fpt_peft.tuner", *TUNER_HELPERS))
            and name != "fpt_peft"  # `from .. import adapter_files`: the package, then the helper
            and name.split(".")[0] not in STANDARD_LIBRARY
        }
        allowed = TUNER_MAY_IMPORT | ({"huggingface_hub"} if path in helpers else set())
        assert {name.split(".")[0] for name in outside} <= allowed, (path.name, outside)
        assert not any(n.startswith("fpt_peft.tuner") for n in _imports(path)) or path not in helpers, path.name


def test_no_module_of_the_package_imports_in_a_circle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, [*trail, name])
        done.add(name)

    for name in graph:
        visit(name, [])
    assert "fpt_peft.tuner.model" in graph and graph["fpt_peft.tuner.config"] <= TUNER_HELPERS


def test_the_package_ships_no_fault_injection() -> None:
    """Killing and pausing saves is the kill tests' business (tests/checkpoint_faults.py), not the package's."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "os.kill(os.getpid()" not in text and "FAULT_ENV" not in text and "fault_point" not in text, path
    assert "time" not in _imports(PACKAGE / "checkpoints.py")  # no pauses inside the save protocol
