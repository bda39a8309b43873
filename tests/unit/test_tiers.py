"""The test folders are the tiers (docs/architecture.md): unit/ needs neither torch nor the torch
backend, so `make test-fast` runs it on the verifier's install; torch/ imports torch but starts no
process group; distributed/ and reliability/ start processes. An AST walk keeps them apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "safetensors", "tokenizers", "planc.backends")
PROCESS_GROUPS = ("torch.distributed", "torch.multiprocessing", "tests.distributed")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _offending(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{p.relative_to(TESTS)} imports {m}" for p in (TESTS / folder).glob("*.py")
                  for m in _imports(p) if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("folder,forbidden", [("unit", HEAVY), ("torch", PROCESS_GROUPS)])
def test_each_tier_imports_only_what_its_tier_allows(folder, forbidden):
    assert _offending(folder, forbidden) == []


def test_the_tier_walk_sees_a_heavy_import(tmp_path):
    """The walk itself: a file that imports torch inside a function is found."""
    f = tmp_path / "t.py"
    f.write_text("def test_x():\n    import torch.nn\n")
    assert _imports(f) == {"torch.nn"}
