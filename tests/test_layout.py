"""The house: the top level holds what a user runs (or imports by name: model.py, utils.py), the
machinery lives in packages, and the project's imports form no circle, between modules or
between packages. Read from the source with ``ast``, so every import counts, including those
inside functions."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top-level modules that are no command but are imported by name (the original scripts' names).
LIBRARIES = {"model", "utils"}
# The package at the bottom: everything else may use it, it uses nothing of the kit's above it.
BOTTOM = "running"


def project_modules(root=ROOT):
    """{dotted module name: path} for the kit's own code (not tests/, not results/)."""
    modules = {}
    for path in sorted(root.glob("*.py")):
        modules[path.stem] = path
    for init in sorted(root.glob("*/__init__.py")):
        package = init.parent
        if package.name in ("tests", "results"):
            continue
        modules[package.name] = init
        for path in sorted(package.rglob("*.py")):
            if path.name != "__init__.py":
                parts = path.relative_to(root).with_suffix("").parts
                modules[".".join(parts)] = path
    return modules


def imports_of(path, modules):
    """The project modules ``path`` imports, wherever in the file the import stands."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from running import numerics``: the submodule if there is one, else the package
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(root=ROOT):
    modules = project_modules(root)
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def circles(graph):
    """Every strongly connected set of more than one node (or a node importing itself), as
    sorted lists: Tarjan's algorithm, iterative."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(start):
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, ()):
                    found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module):
    """A package's modules count as the package; a top-level module as itself."""
    return module.split(".")[0]


def package_graph(graph):
    out = {}
    for module, targets in graph.items():
        mine = package_of(module)
        out.setdefault(mine, set()).update(package_of(t) for t in targets if package_of(t) != mine)
    return out


def test_the_circle_finder_finds_circles():
    """The checks below can fail: a circle of two, one of three and a self-import are found,
    a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"f"},
             "g": {"h"}, "h": set()}
    assert circles(graph) == [["a", "b"], ["c", "d", "e"], ["f"]]
    assert package_graph({"p.x": {"q.y"}, "q.y": {"p.z"}, "p.z": set()}) == \
        {"p": {"q"}, "q": {"p"}}


def test_the_walker_sees_every_kind_of_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "low.py").write_text("import os\n")
    (tmp_path / "pkg" / "mid.py").write_text("def f():\n    from pkg import low\n")
    (tmp_path / "top.py").write_text("import pkg.mid\nfrom pkg.low import x\n")
    graph = import_graph(tmp_path)
    assert graph["pkg.mid"] == {"pkg.low"}
    assert graph["top"] == {"pkg.mid", "pkg.low"}


def test_no_import_circles_between_modules():
    assert circles(import_graph()) == []


def test_no_import_circles_between_packages():
    """Packages (and the top-level modules) import one way: no package both uses and is used
    by another, even through modules that do not form a circle themselves."""
    assert circles(package_graph(import_graph())) == []


def test_the_bottom_package_imports_nothing_above_it():
    graph = import_graph()
    above = {module: sorted(t for t in targets if package_of(t) != BOTTOM)
             for module, targets in graph.items() if package_of(module) == BOTTOM}
    assert {module: targets for module, targets in above.items() if targets} == {}


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.py")), ids=lambda p: p.name)
def test_the_top_level_is_what_a_user_runs(path):
    """A top-level module is a command (it has a ``main`` behind an ``if __name__ ==
    "__main__"`` guard) or one of the names the original scripts used (model, utils). Machinery
    goes into a package."""
    if path.stem in LIBRARIES:
        return
    text = path.read_text()
    assert 'if __name__ == "__main__":' in text and "def main(" in text, \
        f"{path.name} is no command: move it into a package (running/, reporting/, ...)"


# report.py's layers, bottom-up (reporting/__init__.py): a module imports only lower ranks, so
# an analysis never reads a renderer, and markdown and figures never read each other.
REPORT_LAYERS = {"refs": 0, "runs": 1, "convergence": 2, "transfer": 2, "captioning": 2,
                 "paired": 3, "text": 4, "standing": 5, "markdown": 6, "figures": 6}


def test_the_report_is_layered_bottom_up():
    graph = import_graph()
    package = {name.split(".")[1] for name in graph if name.startswith("reporting.")}
    assert package == set(REPORT_LAYERS), "a new reporting module needs its layer here"
    wrong = []
    for name in sorted(package):
        for target in sorted(graph[f"reporting.{name}"]):
            if target.startswith("reporting.") and \
                    REPORT_LAYERS[target.split(".")[1]] >= REPORT_LAYERS[name]:
                wrong.append(f"reporting.{name} -> {target}")
    assert wrong == []
