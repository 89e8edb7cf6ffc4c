"""The layout's rules, read off the imports (ast, nothing imported): what may import what.

The trainer (``experiments/train.py``, ``experiments/trainer/``) imports nothing from the study, the benchmarks
or the checks; its input pipeline nothing from the rest of the trainer; no import cycle in ``experiments/``.
Library tests import nothing from ``experiments``; no test module imports another.
"""

import ast
import pathlib

from tests.helpers import REPO


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``), lazy ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph(folder: str) -> dict[str, set[str]]:
    paths = sorted((REPO / folder).rglob("*.py"))
    modules = {_module(p) for p in paths}
    return {_module(p): {m for m in _imports(p) if m in modules} - {_module(p)} for p in paths}


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_trainer_imports_no_study_benchmark_or_check():
    graph = _graph("experiments")
    trainer = {
        m: d for m, d in graph.items() if _under(m, "experiments.train", "experiments.trainer")
    }
    bad = {m: sorted(d) for m, d in trainer.items()
           if any(_under(x, "experiments.study", "experiments.bench", "experiments.checks") for x in d)}  # fmt: skip
    assert not bad, bad


def test_the_input_pipeline_imports_nothing_else_of_the_trainer():
    graph = _graph("experiments")
    bad = {m: sorted(x for x in d if _under(x, "experiments.trainer", "experiments.train")
                     and not _under(x, "experiments.trainer.input"))
           for m, d in graph.items() if _under(m, "experiments.trainer.input")}  # fmt: skip
    assert not any(bad.values()), bad


def test_no_import_cycle_in_experiments():
    graph = _graph("experiments")
    # A package imports its own modules only through `from package import module`; its __init__ is empty of
    # imports, so an edge to a package is not followed.
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, " -> ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_library_tests_import_no_experiments_and_no_test_imports_another():
    for path in sorted((REPO / "tests").rglob("*.py")):
        imported = _imports(path)
        if path.is_relative_to(REPO / "tests" / "wsjax"):
            assert not any(_under(m, "experiments") for m in imported), path
        others = sorted(m for m in imported if m.rsplit(".", 1)[-1].startswith("test_"))
        assert not others, (path, others)
