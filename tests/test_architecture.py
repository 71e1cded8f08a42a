"""Import contracts (issue 16): which parts of dbwatch may import which, read from the source with `ast`.

Every import counts, at module level or inside a function (a lazy import still couples the modules); only imports
under `if TYPE_CHECKING:` are left out. A contract that reaches further than a module's own imports follows them
transitively. `ast` instead of import-linter: one mechanism for all five contracts (import-linter has no rule on
private names), no dependency, and each failure names the import chain.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "dbwatch"


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module (and the name taken from it, for `from M import name`), at a file's line."""

    importer: str
    module: str
    name: str | None
    path: Path
    line: int

    def __str__(self) -> str:
        what = f"{self.module}.{self.name}" if self.name else self.module
        return f"{self.path.relative_to(REPO)}:{self.line} imports {what}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, without descending into `if TYPE_CHECKING:` bodies (their `else:` still counts)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports_of(path: Path) -> list[Import]:
    """The imports of one file (relative imports resolved; `from pkg import sub` names the submodule)."""
    importer = _module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    out: list[Import] = []
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(importer, a.name, None, path, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(
                    Import(importer, sub, None, path, node.lineno)
                    if sub in MODULES
                    else Import(importer, base, a.name, path, node.lineno)
                )
    return out


IMPORTS: dict[str, list[Import]] = {name: imports_of(path) for name, path in MODULES.items()}


def _internal(module: str) -> Iterator[str]:
    """The dbwatch modules that importing `module` runs: the module and the packages above it."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in MODULES:
            yield name


def _top(module: str) -> str:
    return module.partition(".")[0]


def reach(sources: Iterable[str], ignore: frozenset[tuple[str, str]] = frozenset()) -> dict[str, list[Import]]:
    """Every dbwatch module reachable from `sources` (and their submodules), each with the import chain to it.

    `ignore` holds (importer, imported) edges left out on purpose; each one says why where it is declared.
    """
    chains: dict[str, list[Import]] = {}
    todo = [m for m in MODULES if any(m == s or m.startswith(s + ".") for s in sources)]
    for m in todo:
        chains[m] = []
    while todo:
        current = todo.pop()
        for imp in IMPORTS[current]:
            for target in _internal(imp.module):
                if target not in chains and (current, target) not in ignore:
                    chains[target] = [*chains[current], imp]
                    todo.append(target)
    return chains


def externals(modules: Iterable[str]) -> dict[str, Import]:
    """Third-party top-level packages the modules import (not the standard library, not dbwatch), each with one site."""
    found: dict[str, Import] = {}
    for m in modules:
        for imp in IMPORTS[m]:
            top = _top(imp.module)
            if imp.module and top != "dbwatch" and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, imp)
    return found


def _describe(chains: dict[str, list[Import]], bad: Iterable[str]) -> list[str]:
    return [" -> ".join(str(i) for i in chains[m]) for m in sorted(bad)]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# What the in-app hook may load: itself and the pure modules it shares with the daemon (metric names and label
# normalisers, traceback shapes and classification). Nothing that runs the daemon, and of third parties only
# SQLAlchemy (its extra).
HOOK_MAY_REACH = (
    "dbwatch.hook",
    "dbwatch.labels",
    "dbwatch.metrics",
    "dbwatch.logs.classify",
    "dbwatch.logs.traceback",
)


def test_the_hook_never_imports_the_daemon_side() -> None:
    """`dbwatch.hook` reaches only itself and the shared pure modules; of third parties only SQLAlchemy."""
    chains = reach(["dbwatch.hook"])
    packages = {"dbwatch", "dbwatch.logs"}  # package __init__ files run on the way (docstrings only)
    bad = [m for m in chains if m not in packages and not _under(m, *HOOK_MAY_REACH)]
    assert _describe(chains, bad) == []
    assert {top: str(imp) for top, imp in externals(chains).items() if top != "sqlalchemy"} == {}


def test_log_formats_stay_pure() -> None:
    """`dbwatch.logs.formats` reaches no store, metrics, config or other daemon module, nor a third party's state."""
    chains = reach(["dbwatch.logs.formats"])
    pure = ("dbwatch.logs.formats", "dbwatch.logs.record", "dbwatch.logs.traceback", "dbwatch.logs.prefilter")
    bad = [m for m in chains if m not in {"dbwatch", "dbwatch.logs"} and not _under(m, *pure)]
    assert _describe(chains, bad) == []
    # structlog only for a warning, optional (stdlib logging without it): logging is not state.
    assert {top: str(imp) for top, imp in externals(chains).items() if top != "structlog"} == {}


def test_the_server_imports_no_collector_probe_or_parser() -> None:
    """The HTTP side (server, health) reaches the store, metrics and web config, never a plug-in or the root."""
    chains = reach(["dbwatch.server", "dbwatch.health"])
    forbidden = (
        "dbwatch.app",
        "dbwatch.collectors",
        "dbwatch.probes",
        "dbwatch.logs",
        "dbwatch.hook",
        "dbwatch.ingest",
        "dbwatch.scheduler",
        "dbwatch.monconn",
        "dbwatch.coordination",
        "dbwatch.config",
        "dbwatch.daemon",
    )
    assert _describe(chains, [m for m in chains if _under(m, *forbidden)]) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root, out in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(out)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_no_import_cycles() -> None:
    """No two dbwatch modules import each other, directly or through others (lazy imports included)."""
    graph = {
        m: {imp.module for imp in imps if imp.module in MODULES and imp.module != m} for m, imps in IMPORTS.items()
    }
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The cycle check is live: a three-module loop and a self-contained pair are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": set(), "f": {"g"}, "g": {"f"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["f", "g"]]


# Private names taken across modules today; each goes with the rewrite named beside it (then delete the entry).
PRIVATE_ALLOWED: frozenset[tuple[str, str]] = frozenset()


def _private(imp: Import) -> bool:
    names = [*imp.module.split(".")[1:], *([imp.name] if imp.name else [])]
    return any(n.startswith("_") and not (n.startswith("__") and n.endswith("__")) for n in names)


def test_no_module_imports_another_modules_private_names() -> None:
    """No module in dbwatch, tests or bench imports a `_name` (or a `_module`) of dbwatch's."""
    files = [*MODULES.values(), *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]
    found = [
        imp
        for path in files
        for imp in imports_of(path)
        if _top(imp.module) == "dbwatch" and imp.module != imp.importer and _private(imp)
    ]
    assert [str(i) for i in found if (i.importer, f"{i.module}.{i.name}") not in PRIVATE_ALLOWED] == []
