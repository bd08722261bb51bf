"""The import graph of the package's own modules (training, probes, interp, markov_lens,
benchmarks), read from the source with `ast`: every ``import x`` and ``from x import y``, at module level
or inside functions (including ``if TYPE_CHECKING:`` blocks), counts as an edge; ``from pkg
import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.

- no cycles, not even through imports inside functions: a cycle means two modules that
  cannot be understood (or imported) one without the other;
- imports flow one way: ``training`` imports none of the others, ``probes`` only
  ``training``, ``interp`` only ``probes`` and ``training``; ``markov_lens`` may import all;
  ``benchmarks`` may import training, probes and interp, and only the command line
  (``markov_lens.cli``) imports ``benchmarks``: no library package does;
- no module imports another module's private names (``from A import _name``): what other
  modules need is public where it lives.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("training", "probes", "interp", "markov_lens", "benchmarks")
# the packages each package may import
ALLOWED = {
    "training": {"training"},
    "probes": {"training", "probes"},
    "interp": {"training", "probes", "interp"},
    "markov_lens": set(PACKAGES),  # benchmarks: only from markov_lens.cli (below)
    "benchmarks": {"training", "probes", "interp", "benchmarks"},
}
# (importing module, "module._name" imported) pairs allowed to cross modules: none. An entry
# here that no longer occurs fails the test too.
PRIVATE_IMPORTS_ALLOWED: frozenset[tuple[str, str]] = frozenset()


def module_files() -> dict[str, Path]:
    """Module name -> source file, for every .py file under the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(name: str) -> str | None:
    """The module of ours that importing `name` loads last (None if not ours)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in `module` that
    reaches one of ours."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target is not None:
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                anchor = module if is_package(module) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            if resolve(base) is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, None, node.lineno))
                else:
                    found.append((resolve(base), alias.name, node.lineno))
    return found


GRAPH = {m: imports(m) for m in MODULES}


def edges() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in found if t != m} for m, found in GRAPH.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted: the
    modules that import each other, directly or through the others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(root: str) -> None:  # iterative: no recursion limit on a deep graph
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(components)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through the first module of each strongly connected
    component."""
    return [cycle_in(graph, set(c)) for c in components(graph)]


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through the first module of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first inside the component: a shortest way back to start
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return paths[node] + [start]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    nxt.append(child)
        frontier = nxt
    return sorted(component)


def test_the_graph_sees_the_package():
    assert "training.trainer" in MODULES and "interp.atlas.runner" in MODULES
    assert "training.sweeps" in MODULES and is_package("training.sweeps")
    assert "training.sweeps.spec" in edges()["training.sweeps"]  # package -> its submodules
    assert "training.trainer" in edges()["training.sweeps.tasks"]  # inside a function
    assert "benchmarks.suite" in edges()["markov_lens.cli.bench"]  # inside a function
    assert "markov_lens.cli" in edges()["markov_lens.cli.chain"]  # from pkg import name
    # `from pkg import module` is an edge to the module, `from pkg import name` to pkg
    fake = {
        "a": {"a.b", "c"},
        "a.b": {"c"},
        "c": {"a.b"},
    }
    assert cycles(fake) == [["a.b", "c", "a.b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = edges()
    found = components(graph)
    assert not found, "import cycles (a -> b -> ... -> a; all modules of the cycle):\n" + (
        "\n".join(" -> ".join(cycle_in(graph, set(c))) + f"  ({', '.join(c)})" for c in found)
    )


def test_imports_flow_one_way():
    wrong = [
        f"{module}:{line} imports {target}"
        for module, found in GRAPH.items()
        for target, _, line in found
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert not wrong, (
        "training imports none of probes/interp/markov_lens/benchmarks, probes imports only "
        "training, interp only probes and training, benchmarks only those three:\n"
        + "\n".join(wrong)
    )


def test_only_the_command_line_imports_benchmarks():
    wrong = [
        f"{module}:{line} imports {target}"
        for module, found in GRAPH.items()
        for target, _, line in found
        if target.split(".")[0] == "benchmarks"
        and module.split(".")[0] != "benchmarks"
        and not (module == "markov_lens.cli" or module.startswith("markov_lens.cli."))
    ]
    assert not wrong, "only markov_lens.cli may import benchmarks:\n" + "\n".join(wrong)


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_imported_across_modules():
    found = {
        (module, f"{target}.{name}"): line
        for module, imported in GRAPH.items()
        for target, name, line in imported
        if target != module and name is not None and private(name)
    }
    # a private module imported by name (from pkg import _mod) counts as a private name too
    found |= {
        (module, target): line
        for module, imported in GRAPH.items()
        for target, name, line in imported
        if name is None and target != module and private(target.rpartition(".")[2])
    }
    new = sorted(set(found) - PRIVATE_IMPORTS_ALLOWED)
    assert not new, "private names imported from another module (make them public):\n" + (
        "\n".join(f"{m}:{found[m, n]} imports {n}" for m, n in new)
    )
    stale = sorted(PRIVATE_IMPORTS_ALLOWED - set(found))
    assert not stale, f"allowed private imports that no longer exist (remove them): {stale}"
