"""What failsoft imports is what it declares: `pip install .` alone must run it.

The test environment has the test extras installed, so a runtime import of a package
declared only among them (httpx, once) passes every other test and fails on a fresh
machine at `failsoft demo`. This reads the imports instead of running them.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "failsoft"
# Modules loaded only when an extra is in use (the ray backend), and that extra.
OPTIONAL_MODULES = {"backends/ray_app.py": "ray"}
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
EXTRA = re.compile(r"extra\s*==\s*['\"]([^'\"]+)['\"]")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def module_level_imports(path: Path) -> Iterator[str]:
    """Top-level names imported at module level (not in a function, a try or an if)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def declared() -> dict[str | None, set[str]]:
    """Requirement names by extra (None: the runtime dependencies)."""
    found: dict[str | None, set[str]] = {}
    for requirement in metadata.requires("failsoft") or []:
        name = REQUIREMENT_NAME.match(requirement)
        assert name is not None, requirement
        extra = EXTRA.search(requirement)
        found.setdefault(extra.group(1) if extra else None, set()).add(normal(name.group(1)))
    return found


def test_every_module_level_import_is_a_declared_dependency() -> None:
    requirements = declared()
    distributions = metadata.packages_distributions()
    undeclared = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        allowed = requirements[None] | requirements.get(OPTIONAL_MODULES.get(relative), set())
        for module in set(module_level_imports(path)):
            if module == "failsoft" or module in sys.stdlib_module_names:
                continue
            providers = {normal(name) for name in distributions.get(module, [])}
            if not providers & allowed:
                undeclared.append(f"{relative}: {module} ({', '.join(sorted(providers))})")
    assert not undeclared, "imported but not a runtime dependency:\n" + "\n".join(undeclared)
