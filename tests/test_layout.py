"""The import layout: no circle between modules, and the library folders never import what stands above them.

Layers, lowest first: `config`, `jsonfile`, `model_zoo` (plain data); `model/`, `losses/`, `data/`, `evaluation/` (the library);
`inference/`, `training/`; the scripts at the top level, `tools/`, `bench/`, `tests/`. An import is
any `import` statement in the file, at the top or inside a function.
"""

import ast
import collections

from conftest import ROOT

LIBRARY = ("model", "losses", "data", "evaluation")
LEAVES = ("config", "jsonfile", "model_zoo")  # top-level modules the library may use (no script among them)


def project_modules() -> dict:
    """Dotted module name -> path, for every .py file of the repository (outside hidden folders)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0].startswith("."):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict) -> dict:
    """Module -> the project modules it imports (`from package import submodule` names the submodule)."""
    graph = collections.defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def upward_imports(graph: dict) -> list[str]:
    """'a -> b' for each library module `a` that imports a module `b` outside the library and the leaves."""
    allowed = LIBRARY + LEAVES
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.split(".")[0] in LIBRARY
        for target in targets
        if target.split(".")[0] not in allowed
    )


def circles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checks_find_a_circle_and_an_upward_import():
    graph = {"data.a": {"data.b"}, "data.b": {"data.a", "inference.c"}, "inference.c": {"config"}}
    assert circles(graph) == [["data.a", "data.b"]]
    assert upward_imports(graph) == ["data.b -> inference.c"]


def test_no_import_circle():
    assert circles(import_graph(project_modules())) == []


def test_library_folders_import_nothing_above_them():
    assert upward_imports(import_graph(project_modules())) == []
