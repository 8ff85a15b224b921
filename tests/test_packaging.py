"""The package declares what it imports: `pip install coldllm` brings every module src/ needs."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


def _imported_modules() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "coldllm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"coldllm"}


def test_every_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    owners = packages_distributions()
    missing = {module: owners.get(module) for module in _imported_modules()
               if not {_name(d) for d in owners.get(module, [module])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_declared_packages_are_locked():
    """`make` installs requirements.lock with --no-deps: a dependency missing there is never installed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = {_name(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    needed = list(project["dependencies"]) + project["optional-dependencies"]["serve"] \
        + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["docs"]
    assert {_name(r) for r in needed} - locked == set()
