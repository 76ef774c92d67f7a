"""The package's import graph: layered, no cycle, no function-level import of daal_ray.

Every ``import`` and ``from ... import`` statement of every module is read with ``ast``,
wherever it stands (module level, inside functions and classes, under ``if``), so a
function-level import cannot hide a back-edge. The edges follow what Python runs:

* ``from pkg import name`` reads the namespace of ``pkg`` (its ``__init__``), so it is an
  edge to ``pkg`` even when ``name`` is a submodule (then also to ``pkg.name``). A submodule
  that imports from its own package's ``__init__`` while that ``__init__`` imports it is a
  package-init cycle: it sees a half-initialised package.
* ``import a.b.c`` runs ``a/__init__``, ``a.b/__init__`` and ``a.b.c``: edges to each, except
  the packages the importing module itself lies in (those are initialised before it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daal_ray"

# The layers, bottom up (README: Architecture). A module imports only from its own layer or
# below; within a layer the graph must still be acyclic.
LAYERS = {
    0: ("errors", "settings", "registry", "runtime", "faults", "atomic_io"),
    1: ("data", "models", "pool", "results", "shards", "selection", "sampling"),
    2: ("acquisition", "config"),
    3: ("training", "scoring", "diagnostics"),
    4: ("rundir", "driver", "cycle", "experiment"),
    5: ("tuning", "report", "labeling", "progress", "tracking"),
    6: ("cli",),
}


def module_names(root: Path) -> dict[str, Path]:
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(edges, lazy)``: module -> the package modules it imports; ``lazy`` holds those
    imported inside a function or class body."""
    mods = module_names(root)
    pkg = root.name

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    lazy: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"

        def own_package(name: str, mod: str = mod, is_pkg: bool = is_pkg) -> bool:
            """``name`` is a package ``mod`` lies in (or ``mod`` itself, a package)."""
            return name in mods and mods[name].name == "__init__.py" and (
                mod.startswith(name + ".") or (is_pkg and name == mod))

        def visit(node: ast.AST, nested: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    for a in child.names:
                        parts = a.name.split(".")
                        targets += [".".join(parts[:i]) for i in range(1, len(parts) + 1)
                                    if not own_package(".".join(parts[:i]))]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        here = here[: len(here) - (child.level - 1)]
                        base = ".".join(here + ([base] if base else []))
                    targets = [base] + [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in mods]
                for target in targets:
                    if target.split(".")[0] != pkg:
                        continue
                    found = resolve(target)
                    if found and found != mod:
                        edges[mod].add(found)
                        if inner:
                            lazy[mod].add(found)
                visit(child, inner)

        visit(ast.parse(path.read_text()), False)
    return edges, lazy


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def layer_of(module: str) -> int:
    if module == PACKAGE.name:
        return 0  # the package's own __init__ holds its version and imports nothing
    top = module.split(".")[1] if "." in module else ""
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    raise KeyError(module)


# ---------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import a\n    return a\n",
        "pkg/c.py": "import pkg.a\n",
    })
    edges, lazy = import_graph(pkg)
    # `from pkg import a` reads pkg's namespace too
    assert edges["pkg.b"] == {"pkg", "pkg.a"} and lazy["pkg.b"] == {"pkg", "pkg.a"}
    assert find_cycles(edges) == [["pkg.a", "pkg.b"]]


def test_relative_and_submodule_imports_resolve(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .sub import x\n",
        "pkg/sub/__init__.py": "from . import x\n",
        "pkg/sub/x.py": "from .y import f\nimport pkg.sub.z\n",
        "pkg/sub/y.py": "def f():\n    return 1\n",
        "pkg/sub/z.py": "",
        "pkg/other.py": "import pkg.sub.y\n",
    })
    edges, _ = import_graph(pkg)
    assert edges["pkg"] == {"pkg.sub", "pkg.sub.x"}
    assert edges["pkg.sub"] == {"pkg.sub.x"}
    # x lies in pkg.sub: importing its siblings runs no __init__ that is not already running
    assert edges["pkg.sub.x"] == {"pkg.sub.y", "pkg.sub.z"}
    # from outside pkg.sub, `import pkg.sub.y` runs pkg.sub's __init__ too
    assert edges["pkg.other"] == {"pkg.sub", "pkg.sub.y"}
    assert find_cycles(edges) == []


def test_a_submodule_importing_through_its_package_init_is_a_cycle(tmp_path):
    # `from pkg.sub import y` reads pkg.sub's namespace while pkg.sub's __init__ is still
    # importing x: the package-init cycle, even though y is a submodule.
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from pkg.sub.x import g\n",
        "pkg/sub/x.py": "from pkg.sub import y\ng = y\n",
        "pkg/sub/y.py": "",
    })
    edges, _ = import_graph(pkg)
    assert edges["pkg.sub.x"] == {"pkg.sub", "pkg.sub.y"}
    assert find_cycles(edges) == [["pkg.sub", "pkg.sub.x"]]


# ---------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_the_package_has_no_import_cycle(graph):
    edges, _ = graph
    assert len(edges) > 40, "the package was not found"
    assert find_cycles(edges) == []


def test_no_module_imports_daal_ray_inside_a_function(graph):
    _, lazy = graph
    assert {m: sorted(t) for m, t in lazy.items() if t} == {}


def test_every_import_goes_down_or_across_the_layers(graph):
    edges, _ = graph
    upward = sorted(f"{m} (layer {layer_of(m)}) -> {t} (layer {layer_of(t)})"
                    for m, targets in edges.items() if m != "daal_ray" for t in targets
                    if layer_of(t) > layer_of(m))
    assert upward == []


def test_the_aldriver_module_stays_light():
    """A sweep starts one ALDriver process per experiment: its module must not pull in torch
    or the strategies (about 100 MB per process instead of about 650)."""
    import subprocess
    import sys

    code = "import sys, daal_ray.driver; print(sorted(m for m in ('torch', 'daal_ray.acquisition', 'daal_ray.config') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
