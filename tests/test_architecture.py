"""The package's shape holds: sub-packages in layers, every import pointing down or sideways within its own
sub-package, no import cycle between modules, and no private name imported from another module. Read from the
source with `ast` (imports inside functions count too), so it fails the moment an edge goes the wrong way."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "harness"
# bottom to top: a module may import from its own layer's package or from any layer below
LAYERS = [
    {"errors", "terminal", "pricing", "selfcheck"},  # plain helpers every part may use
    {"suite"},  # what a suite is: its spec, cases and profile
    {"providers"},  # talking to models: types, failures, plans, clients, servers
    {"scoring"},  # judging one answer
    {"store"},  # the DuckDB file
    {"analysis"},  # statistics over stored runs: outcomes, gate, cost, cascade, decision
    {"run", "proxy"},  # running suites, load tests, re-scoring, the cache; live traffic (harness proxy)
    {"report"},  # pages
    {"cli", "__init__", "scorers"},  # the edges (scorers: where suites' own scorers found Score before)
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported harness module, names taken from it) for every import in `path`, nested ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("harness")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            if not base.startswith("harness"):
                continue
            for alias in node.names:  # `from harness.analysis import paired` imports a module
                sub = f"{base}.{alias.name}"
                found.append((sub, []) if sub in modules else (base, [alias.name]))
    return found


def _part(module: str) -> str:
    """The layer key of a module: its sub-package, or its own name at the top of `harness`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {target for target, _ in _imports(path, name, modules) if target != name}
            for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    assert {_part(name) for name in _modules()} <= set(LAYER)


def test_imports_point_down():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for target, _ in _imports(path, name, modules):
            if target == "harness" or _part(target) == _part(name):
                continue
            if LAYER[_part(target)] > LAYER[_part(name)]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    private = [f"{name} takes {taken} from {target}" for name, path in modules.items()
               for target, names in _imports(path, name, modules) for taken in names
               if taken.startswith("_") and not taken.startswith("__")]
    assert private == []


def test_sql_stays_in_the_store_package():
    """Nothing outside harness/store touches the DuckDB connection or runs SQL of its own: reads are the Store's
    methods and the named queries of harness.store.queries."""
    outside = []
    for name, path in _modules().items():
        if _part(name) == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            con = isinstance(node, ast.Attribute) and node.attr == "con"
            query = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "query"
            if con or query:
                outside.append(f"{name}:{node.lineno}")
    assert outside == []


def test_each_scorer_declares_the_facts_of_the_metrics_it_computes():
    """Direction, count and headline live beside the scorer (`METRICS`), and name metrics it really computes."""
    from harness.scoring.clauses import ClausesScorer
    from harness.scoring.items import LineItemsScorer
    from harness.scoring.labels import LabelScorer
    from harness.scoring.registry import metric_info

    for kind in (LabelScorer, LineItemsScorer, ClausesScorer):
        text = (ROOT / (kind.__module__.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        for metric in kind.METRICS:
            assert f'Metric("{metric}"' in text, (kind.__name__, metric)
    hallucinated = metric_info("quotes.hallucinated")
    assert (hallucinated.better, hallucinated.count, hallucinated.headline) == ("lower", True, True)
    assert metric_info("items.n_gold").better == "neither" and metric_info("accuracy").headline
    assert metric_info("some.custom_metric") == metric_info("another")  # undeclared: a rate, higher is better
    assert metric_info("some.custom_metric").better == "higher" and not metric_info("x").count
