"""The import rules of planc, from an AST walk over planc/ (docs/architecture.md says why):
no import cycles (imports inside functions and importlib.import_module included; imports under
`if TYPE_CHECKING:` excluded, they never run); compiler/ and verifier/ import nothing from
backends/; torch only under backends/torch/; z3 only in verifier/; planc/layout/ imports only
planc/layout/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "planc"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Every module the code imports when it runs (absolute names)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "import_module":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.add(arg.value)
                else:  # a computed name hides an edge from every rule below
                    out.add("<dynamic import>")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        graph[mod] = _imports(ast.parse(path.read_text(), str(path)), package)
    return graph


GRAPH = _graph()


def _internal(names: set[str]) -> set[str]:
    """planc modules among imported names (`from planc.x import y`: y may be a module)."""
    return {n for n in names if n in GRAPH}


def test_no_module_imports_by_a_computed_name():
    bad = sorted(m for m, names in GRAPH.items() if "<dynamic import>" in names)
    assert not bad, f"import_module with a computed name in {bad}"


def test_there_are_no_import_cycles():
    # Tarjan's strongly connected components over the planc modules
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(_internal(GRAPH[v]) - {v}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodule is not a cycle of code
            comp = [c for c in comp if not any(o.startswith(c + ".") for o in comp)]
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


def _violations(where: str, forbidden: tuple[str, ...], allowed_under: str | None = None
                ) -> list[str]:
    out = []
    for mod, names in sorted(GRAPH.items()):
        if not (mod == where or mod.startswith(where + ".")) and where != "planc":
            continue
        if allowed_under and (mod == allowed_under or mod.startswith(allowed_under + ".")):
            continue
        out += [f"{mod} imports {n}" for n in sorted(names)
                if any(n == f or n.startswith(f + ".") for f in forbidden)]
    return out


@pytest.mark.parametrize("where,forbidden,allowed_under", [
    ("planc.compiler", ("planc.backends",), None),
    ("planc.verifier", ("planc.backends",), None),
    ("planc", ("torch", "safetensors", "transformers"), "planc.backends.torch"),
    ("planc", ("z3",), "planc.verifier"),
    ("planc.layout", ("torch", "z3", "pydantic", "lark"), None),
])
def test_heavy_and_backend_imports_stay_where_they_belong(where, forbidden, allowed_under):
    assert not _violations(where, forbidden, allowed_under)


def test_the_walk_sees_imports_inside_functions_and_importlib():
    tree = ast.parse("def f():\n    import torch\n    importlib.import_module('planc.io')\n")
    assert {"torch", "planc.io"} <= _imports(tree, "planc")


def test_layout_imports_only_layout():
    bad = [f"{m} imports {n}" for m, names in sorted(GRAPH.items()) if m.startswith("planc.layout")
           for n in sorted(names) if n.startswith("planc") and not n.startswith("planc.layout")]
    assert not bad
