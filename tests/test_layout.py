"""The library apart from the experiments: ``import inilora`` loads nothing beyond what ``import peft``
loads, other than its own core — no experiment module, no optional package (checked in a fresh process)."""

import os
import subprocess
import sys
from pathlib import Path

CODE = """
import sys, peft
before = set(sys.modules)
import inilora
new = set(sys.modules) - before
assert {m.split('.')[0] for m in new} <= {'inilora'}, sorted(m for m in new if not m.startswith('inilora'))
assert not [m for m in new if m.startswith(('inilora.experiments', 'inilora.cli'))], sorted(new)
print(len(new))
"""


def test_import_inilora_loads_only_its_core():
    src = str(Path(__import__("inilora").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 10  # the core's own modules did load


def test_no_method_name_dispatch_outside_the_registry():
    src = Path(__import__("inilora").__file__).parent
    offenders = [f"{path.relative_to(src)}:{number}" for path in src.rglob("*.py") if path.parent.name != "methods"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "RESIDUAL_METHODS" in line or "RANK_LIMITED_METHODS" in line
                 or any(f'method {op} "{name}"' in line for op in ("==", "!=") for name in ("lora", "inilora", "pissa",
                                                                                          "milora"))]
    assert offenders == []


def _import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``src``'s package it imports, module-level and function-level imports alike
    (a lazy import or one under ``TYPE_CHECKING`` is still an edge)."""
    import ast

    root = src.parent
    files = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
             for f in src.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                edges.update(found if len(found) == len(node.names) else [base, *found])
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_and_the_core_imports_no_experiments():
    """Imports go one way (docs/architecture.md): no cycle anywhere in the package, counting lazy imports,
    and no core module imports the application (the experiments, the command line)."""
    graph = _import_graph(Path(__import__("inilora").__file__).parent)
    assert _cycles(graph) == []
    app = ("inilora.experiments", "inilora.cli")
    core = {m: sorted(e for e in edges if e.startswith(app)) for m, edges in graph.items() if not m.startswith(app)}
    assert {m: e for m, e in core.items() if e} == {}


def test_the_cycle_check_sees_lazy_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    (package / "c.py").write_text("from .a import b\n")
    assert _cycles(_import_graph(package)) == [["pkg.a", "pkg.b"]]
