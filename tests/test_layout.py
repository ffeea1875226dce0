"""The layout's import rules, read from every module's AST: which stage may import which, where the lazy edges
are, and that no module reaches into another package's private names. Each violation is named with its place."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HTTP_STACK = ("httpx", "starlette", "uvicorn", "redis")
# The runtime's public names that execution and state may use besides `engine`'s own public API.
RUNTIME_PUBLIC = {
    "engine.runtime.state",
    "engine.runtime.constraints",
    "engine.runtime.messages",
    "engine.runtime.settings",
    "engine.runtime.reserved",
    "engine.runtime.embedder",
}


@dataclass(frozen=True)
class Edge:
    """One import: `importer` (module) imports `target` (module), at `line`; lazy when inside a function."""

    importer: str
    target: str
    names: tuple[str, ...]
    line: int
    lazy: bool

    def __str__(self) -> str:
        what = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.importer.replace('.', '/')}.py:{self.line}: imports {self.target}{what}"


def modules() -> Iterator[tuple[str, Path]]:
    for top in ("engine", "providers"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def is_package(module: str) -> bool:
    return (REPO / module.replace(".", "/") / "__init__.py").is_file()


def package_of(module: str) -> str:
    return module if is_package(module) else module.rpartition(".")[0]


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = package_of(importer).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def edges_of(module: str, path: Path) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(), str(path))
    lazy_lines: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy_lines.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        # only the body of `if TYPE_CHECKING:` is types only; an else branch or `if not TYPE_CHECKING:` runs
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for stmt in node.body:
                type_checking.update(id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue  # types only: no edge at run time
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(module, alias.name, (), node.lineno, id(node) in lazy_lines)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            names = tuple(a.name for a in node.names)
            submodules = [f"{target}.{n}" for n in names if is_package(f"{target}.{n}") or _is_module(f"{target}.{n}")]
            if submodules:
                for sub in submodules:
                    yield Edge(module, sub, (), node.lineno, id(node) in lazy_lines)
            else:
                yield Edge(module, target, names, node.lineno, id(node) in lazy_lines)


def _is_module(name: str) -> bool:
    return (REPO / (name.replace(".", "/") + ".py")).is_file()


ALL = [e for m, p in modules() for e in edges_of(m, p)]


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(rule) -> list[str]:
    return [f"{e}: {why}" for e in ALL if (why := rule(e))]


def test_the_decision_core_never_imports_the_http_stack() -> None:
    assert violations(lambda e: within(e.importer, "engine") and within(e.target, *HTTP_STACK) and "http stack") == []


def test_language_compiler_runtime_use_only_the_catalog_from_providers() -> None:
    def rule(e: Edge) -> str:
        if not within(e.importer, "engine.language", "engine.compiler", "engine.runtime"):
            return ""
        if within(e.target, "providers") and not within(e.target, "providers.catalog"):
            return "only providers.catalog"
        if e.target == "engine" or within(
            e.target, "engine.api", "engine.reload", "engine.reload_paths", "engine.tools", "engine.cli"
        ):
            return "a lower stage imports a higher one (the `engine` package is the API)"
        # within the core: language <- runtime <- compiler (the compiler builds the runtime's structures)
        if within(e.importer, "engine.language") and within(e.target, "engine.runtime", "engine.compiler"):
            return "the language stage imports nothing of runtime or compiler"
        if within(e.importer, "engine.runtime") and within(e.target, "engine.compiler"):
            return "the runtime imports nothing of the compiler"
        return ""

    assert violations(rule) == []


def test_tools_and_reload_may_add_only_the_api() -> None:
    def rule(e: Edge) -> str:
        if within(e.importer, "engine.tools", "engine.reload", "engine.reload_paths"):
            if within(e.target, "providers") and not within(e.target, "providers.catalog"):
                return "tools and reload use only providers.catalog"
            if within(e.target, "engine.cli"):
                return "nothing but engine.cli imports engine.cli"
        return ""

    assert violations(rule) == []


def test_the_api_has_one_lazy_edge_into_execution() -> None:
    out = [e for e in ALL if e.importer == "engine.api" and within(e.target, "providers")]
    into_execution = [e for e in out if within(e.target, "providers.execution")]
    others = [str(e) for e in out if not within(e.target, "providers.execution", "providers.catalog")]
    assert others == [], "engine.api imports providers only through one lazy edge into providers.execution"
    assert len(into_execution) == 1 and into_execution[0].lazy, [str(e) for e in into_execution]


def test_the_cli_has_one_lazy_edge_into_the_gateway_per_command_and_nobody_imports_the_cli() -> None:
    out = [e for e in ALL if within(e.importer, "engine.cli") and within(e.target, "providers")]
    gateway = [e for e in out if within(e.target, "providers.gateway")]
    others = [str(e) for e in out if not within(e.target, "providers.gateway", "providers.catalog")]
    assert others == []
    # `serve` (the server) and `keys` (the keys-file editor): one lazy edge each, taken when the command runs
    assert sorted(e.importer for e in gateway) == ["engine.cli.keys", "engine.cli.serve"], [str(e) for e in gateway]
    assert all(e.lazy for e in gateway), [str(e) for e in gateway]
    assert (
        violations(
            lambda e: not within(e.importer, "engine.cli") and within(e.target, "engine.cli") and "imports the CLI"
        )
        == []
    )


def test_catalog_and_clients_never_import_engine() -> None:
    assert (
        violations(
            lambda e: (
                within(e.importer, "providers.catalog", "providers.clients")
                and within(e.target, "engine")
                and "catalog and clients are independent of engine"
            )
        )
        == []
    )


def test_execution_state_and_gateway_use_only_public_engine_names() -> None:
    def rule(e: Edge) -> str:
        if not within(e.importer, "providers.execution", "providers.state", "providers.gateway"):
            return ""
        if not within(e.target, "engine"):
            return ""
        if e.target == "engine" or e.target in RUNTIME_PUBLIC:
            return ""
        return "use engine's public API (or the runtime's public modules: RUNTIME_PUBLIC)"

    assert violations(rule) == []
    assert (
        violations(
            lambda e: (
                within(e.importer, "providers.execution", "providers.state")
                and within(e.target, "providers.gateway")
                and "execution and state do not know the gateway"
            )
        )
        == []
    )


def _private_uses(module: str, path: Path) -> Iterator[str]:
    """`from x import _name` and `alias._name` where x is another package's module; getattr with a private literal."""
    tree = ast.parse(path.read_text(), str(path))
    own = package_of(module)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            for a in node.names:
                full = f"{target}.{a.name}"
                if is_package(full) or _is_module(full):
                    aliases[a.asname or a.name] = full
                elif _private(a.name) and package_of(target) != own and within(target, "engine", "providers"):
                    yield f"{module}:{node.lineno}: imports {target}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = aliases.get(node.value.id)
            if target and within(target, "engine", "providers") and package_of(target) != own:
                yield f"{module}:{node.lineno}: uses {target}.{node.attr}"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            yield f"{module}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})"


def _defined_private_names(package: str) -> set[str]:
    """Every private name a package defines: functions, classes, assignments, `self._x` attributes, parameters."""
    out: set[str] = set()
    for module, path in modules():
        if package_of(module) != package:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                out.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                out.add(node.attr)
            elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
                out.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value):
                out.add(node.value)  # __slots__ entries, namedtuple fields
    return {n for n in out if _private(n)}


def test_no_module_reads_a_private_attribute_its_package_does_not_define() -> None:
    """`engine._executor()` from the gateway: a private name used on an object, defined in another package."""
    found = []
    defined: dict[str, set[str]] = {}
    for module, path in modules():
        own = package_of(module)
        names = defined.setdefault(own, _defined_private_names(own))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr not in names
            ):
                found.append(f"{module}:{node.lineno}: .{node.attr}")
    assert found == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_touches_another_packages_private_names() -> None:
    assert [v for m, p in modules() for v in _private_uses(m, p)] == []


@pytest.mark.parametrize("package", ["engine", "providers"])
def test_public_api_is_exactly_all(package: str) -> None:
    import importlib

    mod = importlib.import_module(package)
    public = {n for n in vars(mod) if not n.startswith("_") and not isinstance(vars(mod)[n], type(importlib))}
    lazy = set(getattr(mod, "_LAZY", {}))
    assert set(mod.__all__) == public | lazy, "the public names are exactly __all__"


def test_the_checker_sees_imports_that_run(tmp_path: Path) -> None:
    """Only the body of `if TYPE_CHECKING:` is skipped: its else branch and `if not TYPE_CHECKING:` run."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import starlette\nelse:\n    import httpx\n"
        "if not TYPE_CHECKING:\n    import redis\n"
        "def f():\n    import uvicorn\n"
    )
    found = {(e.target, e.lazy) for e in edges_of("engine.runtime.m", src)}
    assert {("httpx", False), ("redis", False), ("uvicorn", True)} <= found
    assert not any(t == "starlette" for t, _ in found)
