"""The import structure the docs promise: every folder imports only folders of lower layers (the table in
docs/architecture.md), and no module imports itself back through others. Function-local imports count."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layers() -> dict[str, int]:
    """``{folder: layer}`` from the table rows ``| 3 | `rewards/` | ...`` of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d+) \| `(\w+)/` \|", text, re.M)}


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, at module level or inside functions: ``from a.b import c``
    counts as ``a.b.c`` where that is a module, else ``a.b``; relative imports are resolved."""
    package = _module_of(path) if path.name == "__init__.py" else _module_of(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # a.b.function -> a.b
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph(layers):
    files = [p for folder in layers for p in (ROOT / folder).rglob("*.py")]
    modules = {_module_of(p): p for p in files}
    return {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}


def test_the_layer_table_names_every_folder_of_the_core():
    assert set(_layers()) == {"pipeline", "stages", "tasks", "rewards", "trainer", "rollout", "sandbox"}


def test_every_folder_imports_only_down_the_layers():
    layers = _layers()
    wrong = [f"{m} imports {t} (layer {layers[m.split('.')[0]]} -> {layers[t.split('.')[0]]})"
             for m, targets in _graph(layers).items() for t in targets
             if t.split(".")[0] != m.split(".")[0] and layers[t.split(".")[0]] >= layers[m.split(".")[0]]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = _graph(_layers())
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)
