"""The package's shape: no import cycles, small modules, no reads of another object's privates."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

from support.paths import ROOT

PACKAGE = ROOT / "flask_sse_ext"
MODULES = sorted(PACKAGE.rglob("*.py"))

#: Underscored names that their library documents as public: werkzeug's ``LocalProxy`` and
#: ``collections.namedtuple`` (underscored so as not to clash with field names).
DOCUMENTED = {"_get_current_object", "_replace"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    name = _name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(path: Path, known: Set[str]) -> Set[str]:
    """The package modules ``path`` imports anywhere (``TYPE_CHECKING`` blocks and function
    bodies included), with the packages Python runs on the way; not its own ancestors, which
    Python has run (or is running) before it."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: List[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(path).split(".")
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for end in range(2, len(parts) + 1):
                if ".".join(parts[:end]) in known:
                    found.add(".".join(parts[:end]))
    me = _name(path)
    return {target for target in found if not (me + ".").startswith(target + ".")}


def _graph() -> Dict[str, Set[str]]:
    known = {_name(path) for path in MODULES}
    return {_name(path): _imports(path, known) for path in MODULES}


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(module: str) -> List[str]:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return []


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = _graph()
    assert graph["flask_sse_ext.extension"] >= {"flask_sse_ext.state", "flask_sse_ext.endpoint"}
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400


def _private_reads(source: str) -> List[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in DOCUMENTED:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reads_another_objects_private_names(path: Path) -> None:
    assert _private_reads(path.read_text()) == []


def test_the_private_read_check_sees_one() -> None:
    assert _private_reads("state._hub.count\nself._ok\nproxy._get_current_object()") == ["1: state._hub"]


OUTSIDE_BROKERS = [p for p in MODULES if "brokers" not in p.relative_to(PACKAGE).parts]
CONCRETE = {"MemoryBroker", "RedisBroker", "RedisLimiter"}


def _transport_names(source: str) -> List[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in CONCRETE:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in CONCRETE:
            found.append(node.attr)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {alias.name for alias in node.names}
            if module.split(".")[0] in ("redis", "hiredis") or module.endswith(("memory", "redis")):
                found.append(f"from {module}")
            found.extend(sorted(names & CONCRETE))
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.split(".")[0] in ("redis", "hiredis"))
    return found


@pytest.mark.parametrize("path", OUTSIDE_BROKERS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_outside_brokers_names_a_concrete_broker_or_redis(path: Path) -> None:
    """Capabilities, not class checks: the rest of the package knows the ``Broker`` contract."""
    assert _transport_names(path.read_text()) == []


def test_the_transport_check_sees_one() -> None:
    source = "from .brokers.memory import MemoryBroker\nimport redis\nisinstance(b, RedisBroker)"
    assert _transport_names(source) == ["from brokers.memory", "MemoryBroker", "redis", "RedisBroker"]
