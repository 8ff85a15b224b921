"""The package's shape: every module imports, no two modules import each other (directly or round
a longer loop), and shared building blocks exist once."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import coldllm

ROOT = Path(coldllm.__file__).parent


def module_names() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_modules(name: str, known: set[str], deferred: bool = True) -> set[str]:
    """Package modules ``name`` imports in its source; ``deferred``: function bodies included (an
    import deferred to call time is still a dependency)."""
    path = Path(importlib.util.find_spec(name).origin)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree) if deferred else tree.body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a name inside a module
                target = target.rpartition(".")[0]
            # a module's own packages are already being imported when it runs: no edge
            if target and not name.startswith(target + ".") and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports():
    for name in module_names():
        if name.startswith("coldllm.serve") and importlib.util.find_spec("fastapi") is None:
            continue  # the service is an optional extra
        importlib.import_module(name)


def test_no_import_cycle():
    known = set(module_names())
    graph = {name: imported_modules(name, known) for name in known}  # deferred imports count too
    assert "coldllm.funnel.stages" in graph["coldllm.pipeline"]  # the walk sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    at_import = {name: imported_modules(name, known, deferred=False) for name in known}
    assert find_cycle(at_import) is None, " -> ".join(find_cycle(at_import))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("pattern,home", [("nn.Sequential(", "layers.py"), ("class EarlyStopping", "early_stopping.py"),
                                          ("os.replace(", "utils.py")])
def test_building_blocks_live_in_one_place(pattern, home):
    """One MLP builder, one early-stopping rule, one way to replace a file (``atomic_path``) in the
    modules that train and write artifacts (the service rebuilds saved stacks layer by layer, which
    is loading, not building)."""
    owners = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                    if pattern in p.read_text() and p.parent.name != "serve")
    assert owners == [home]


def test_importing_the_package_loads_no_benchmark_bookkeeping():
    """``import coldllm`` (and its command line) must not need what only the benchmarks use."""
    import subprocess
    import sys

    code = ("import sys, coldllm, coldllm.cli, coldllm.pipeline; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('results', 'judge_stats', 'render', 'sklearn')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
