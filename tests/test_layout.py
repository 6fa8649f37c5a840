"""The package's layout: no module of src/smart_product imports one that imports it back."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_imports(src: Path) -> dict[str, set[str]]:
    """{module: the package modules it imports}, from the source (top level and inside functions)."""
    names = {}
    for f in (src / "smart_product").rglob("*.py"):
        parts = f.relative_to(src).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in names.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                deps |= {mod} | {f"{mod}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def mutual_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph[b]})


def test_no_module_imports_one_that_imports_it_back():
    assert mutual_imports(module_imports(SRC)) == []


def test_the_check_sees_a_cycle(tmp_path):
    pkg = tmp_path / "smart_product"
    (pkg / "heads").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "images.py").write_text("from .backbones import n_workers\n")
    (pkg / "backbones.py").write_text("def f():\n    from .images import CachedBatches\n")
    (pkg / "heads" / "__init__.py").write_text("from .loop import run_head\n")
    (pkg / "heads" / "loop.py").write_text("from ..data import ID\n")
    (pkg / "data.py").write_text("")
    graph = module_imports(tmp_path)
    assert graph["smart_product.heads"] == {"smart_product.heads.loop"}
    assert graph["smart_product.heads.loop"] == {"smart_product.data"}
    assert mutual_imports(graph) == [("smart_product.backbones", "smart_product.images")]
