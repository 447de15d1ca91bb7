"""The house keeps its shape: no import cycles, stages as the top layer, the core below the rest, and no module
reaching into another's underscore names. Reads every import of the package, the ones inside functions too."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rlhfkit"

# who may import a top-layer module (prefix match on the importer)
TOP_LAYER = {
    "rlhfkit.stages": ("rlhfkit.stages", "rlhfkit.cli", "rlhfkit.pipeline", "rlhfkit.flywheel"),
    "rlhfkit.pipeline": ("rlhfkit.stages", "rlhfkit.cli", "rlhfkit.flywheel"),
    "rlhfkit.flywheel": ("rlhfkit.flywheel", "rlhfkit.cli"),
    "rlhfkit.cli": (),
}
# the core imports nothing of rlhfkit but the core
CORE = (
    "rlhfkit.losses",
    "rlhfkit.data",
    "rlhfkit.config",
    "rlhfkit.errors",
    "rlhfkit.atomic",
    "rlhfkit.console",
    "rlhfkit.models.loading",
)


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # module imported (a submodule when `from package import submodule`)
    name: str | None  # the name taken from it, for `from module import name`
    line: int

    def __str__(self) -> str:
        what = f"from {self.target} import {self.name}" if self.name else f"import {self.target}"
        return f"{self.importer}:{self.line}: {what}"


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(root: Path) -> list[Import]:
    """Every import of a module of the package by a module of the package, at any depth of the code."""
    known = modules(root)
    package = root.name
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [
                    Import(module, a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == package
                ]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != package:
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in known:
                        found.append(Import(module, submodule, None, node.lineno))
                    else:
                        found.append(Import(module, target, alias.name, node.lineno))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """Each import cycle once, as the modules around it."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.importer != edge.target:
            graph.setdefault(edge.importer, set()).add(edge.target)
    found, seen, state = [], set(), {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append([*cycle, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_breaks(edges: list[Import]) -> list[str]:
    broken = []
    for edge in edges:
        for top, allowed in TOP_LAYER.items():
            if within(edge.target, top) and not any(within(edge.importer, a) for a in allowed):
                broken.append(f"{edge}: {top} is the top layer; only {', '.join(allowed) or 'nothing'} may import it")
        if any(within(edge.importer, c) for c in CORE) and not any(within(edge.target, c) for c in CORE):
            broken.append(f"{edge}: the core ({', '.join(CORE)}) imports only the core")
    return broken


def private_imports(edges: list[Import]) -> list[str]:
    return [
        f"{edge}: '{edge.name}' is private to {edge.target}; make it public (and say what it is in one line)"
        for edge in edges
        if edge.name and edge.name.startswith("_") and edge.importer != edge.target
    ]


def test_no_import_cycles():
    found = cycles(imports(PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_stages_are_the_top_layer_and_the_core_the_bottom():
    broken = layer_breaks(imports(PACKAGE))
    assert not broken, "\n".join(broken)


def test_no_module_imports_another_modules_underscore_names():
    broken = private_imports(imports(PACKAGE))
    assert not broken, "\n".join(broken)


# ------------------------------------------------------------------------- the checks catch what they are for


@pytest.fixture
def scratch(tmp_path):
    """A scratch package `rlhfkit` with the given files, as a function files -> its imports."""

    def make(files: dict[str, str]) -> list[Import]:
        root = tmp_path / "rlhfkit"
        for name, text in {"__init__.py": "", "stages/__init__.py": "", **files}.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        return imports(root)

    return make


def test_a_cycle_through_an_import_inside_a_function_is_found(scratch):
    edges = scratch(
        {
            "train.py": "from .models import loading\n",
            "models/__init__.py": "",
            "models/loading.py": "def resolve():\n    from ..demo.build import ensure_default\n",
            "demo/__init__.py": "",
            "demo/build.py": "from ..train import make_optimizer\n",
        }
    )
    assert cycles(edges) == [["rlhfkit.demo.build", "rlhfkit.train", "rlhfkit.models.loading", "rlhfkit.demo.build"]]


def test_a_library_importing_a_stage_and_the_core_importing_up_are_found(scratch):
    edges = scratch(
        {
            "stages/reward.py": "RewardEncoder = object\n",
            "evaluate/__init__.py": "",
            "evaluate/policy.py": "def run():\n    from ..stages.reward import RewardEncoder\n",
            "losses.py": "from .evaluate import policy\n",
            "cli.py": "from .stages import reward\n",
        }
    )
    broken = layer_breaks(edges)
    assert len(broken) == 2
    assert "rlhfkit.evaluate.policy:2: from rlhfkit.stages.reward import RewardEncoder" in broken[0]
    assert "rlhfkit.losses:1: import rlhfkit.evaluate.policy: the core" in broken[1]


def test_an_underscore_import_across_modules_is_found(scratch):
    edges = scratch(
        {
            "data/__init__.py": "",
            "data/records.py": "class _Where: ...\n",
            "data/importers.py": "from .records import _Where\n",
        }
    )
    assert private_imports(edges) == [
        "rlhfkit.data.importers:1: from rlhfkit.data.records import _Where: '_Where' is private to "
        "rlhfkit.data.records; make it public (and say what it is in one line)"
    ]
