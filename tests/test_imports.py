"""What imports what: the report stays free of torch and Lightning, functional/ free of Lightning, no cycles.

Each check that depends on ``sys.modules`` runs in a fresh interpreter (a subprocess), since this
test process has long imported torch and Lightning.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_lplr"
HEAVY = ("torch", "lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")
# A guard against hangs only: each subprocess takes a few seconds on two idle cores (torch's import
# is the slowest part of (b)); a loaded machine may be several times slower.
TIMEOUT_S = 300


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


# ---------------------------------------------------------------------------------------------
# (a) lightning-lplr report imports neither torch nor Lightning
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV run (with a marker in hparams.yaml) and a TensorBoard run (with its text marker)."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    from lightning_lplr.reporting.marker import encode_marker, flatten_marker, make_marker, marker_tag

    root = tmp_path_factory.mktemp("runs")
    marker = make_marker(
        kernel_kind="full", loss="mse_loss", loss_star="zero", optimizer="SGD", plain_sgd=True
    )
    csv_run = root / "csv" / "version_0"
    csv_run.mkdir(parents=True)
    lines = ["epoch,step,lplr/pl/gap,lplr/pl/envelope_min,lplr/ntk/lambda_min,lplr/ntk/lambda_max"]
    lines += [
        f"0,{t},{0.9**t!r},0.25,{0.1 if t % 10 == 0 else ''},{2.0 if t % 10 == 0 else ''}" for t in range(50)
    ]
    (csv_run / "metrics.csv").write_text("\n".join(lines) + "\n")
    (csv_run / "hparams.yaml").write_text(yaml.safe_dump(flatten_marker(marker, "lplr/")))
    writer = SummaryWriter(log_dir=str(root / "tb" / "version_0"))
    writer.add_text(marker_tag("lplr/"), encode_marker(marker), global_step=0)
    for t in range(50):
        writer.add_scalar("lplr/pl/gap", 0.8**t, global_step=t)
    writer.close()
    return root


def test_report_cli_imports_neither_torch_nor_lightning(small_runs: Path) -> None:
    code = f"""
        import contextlib, io, json, sys
        import lightning_lplr.report.cli as cli
        after_import = sorted(m for m in {HEAVY!r} + ("numpy", "matplotlib") if m in sys.modules)
        outputs = {{}}
        for flag in ("--json", "--markdown", None):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                code = cli.main(["report", sys.argv[1]] + ([flag] if flag else []))
            assert code == 0, code
            outputs[str(flag)] = buffer.getvalue()
        json.loads(outputs["--json"])
        after_run = sorted(m for m in {HEAVY!r} + ("matplotlib",) if m in sys.modules)
        print(json.dumps({{"after_import": after_import, "after_run": after_run, "text": outputs["None"]}}))
    """
    result = json.loads(run_python(code, str(small_runs)).stdout)
    assert result["after_import"] == []  # not even numpy for --help
    assert result["after_run"] == []  # neither torch, Lightning nor matplotlib without --plot
    assert "Run 'csv/version_0'" in result["text"] and "Run 'tb/version_0'" in result["text"]
    assert "key semantics v2" in result["text"]


def test_plot_imports_matplotlib_only_when_asked(small_runs: Path, tmp_path: Path) -> None:
    code = f"""
        import contextlib, io, json, sys
        from lightning_lplr.report.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["report", sys.argv[1], "--plot", sys.argv[2]]) == 0
        print(json.dumps(sorted(m for m in {HEAVY!r} + ("matplotlib",) if m in sys.modules)))
    """
    png = tmp_path / "runs.png"
    assert json.loads(run_python(code, str(small_runs), str(png)).stdout) == ["matplotlib"]
    assert png.stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# (b) functional/ works where Lightning cannot be imported
# ---------------------------------------------------------------------------------------------


def test_functional_works_without_lightning() -> None:
    code = """
        import importlib.abc, sys

        class NoLightning(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, NoLightning())
        for blocked in ("lightning", "lightning.pytorch", "pytorch_lightning"):
            try:
                __import__(blocked)
            except ImportError:
                pass
            else:
                raise AssertionError(f"{blocked} imported despite the finder")

        import torch
        import lightning_lplr.functional as F

        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2).double()
        x = torch.randn(5, 3, dtype=torch.float64)
        kernel = F.empirical_ntk(layer, x, kind="full")
        # f(x) = Wx + b: J J^T[(i, a), (j, c)] = δ_ac (x_i·x_j + 1), rows sample-major.
        expected = torch.kron(x @ x.T + 1, torch.eye(2, dtype=torch.float64))
        assert kernel.shape == (10, 10), kernel.shape
        assert torch.allclose(kernel, expected, rtol=1e-12, atol=1e-12), (kernel - expected).abs().max()
        assert abs(F.fit_linear_rate([1.0, 0.5, 0.25]).contraction - 0.5) < 1e-12
        assert not any(m.split(".")[0] in ("lightning", "pytorch_lightning") for m in sys.modules)
        print("ok")
    """
    assert run_python(code).stdout.strip() == "ok"


# ---------------------------------------------------------------------------------------------
# (c) the module graph: no import cycle, and functional/ never reaches Lightning
# ---------------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, in top-level if/try/with blocks,
    not under ``if TYPE_CHECKING:`` and not inside functions or classes."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def imported_names(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The fully qualified modules an import statement loads (resolving relative imports)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    names = [base]
    names += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return names


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for node in module_level_imports(tree):
            edges.update(name for name in imported_names(node, module) if name in MODULES)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_module_graph_is_acyclic() -> None:
    graph = import_graph()
    assert "lightning_lplr.report.cli" in graph and "lightning_lplr.functional._problem" in graph
    assert "lightning_lplr.report.reader" in graph["lightning_lplr.report.summary"]  # edges are found
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def direct_lightning_importers(graph: dict[str, set[str]]) -> set[str]:
    """Modules of the package with a module-level import of Lightning."""
    out = set()
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in module_level_imports(tree):
            if any(name.split(".")[0] in LIGHTNING for name in imported_names(node, module)):
                out.add(module)
    return out


LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")


def test_functional_never_imports_lightning() -> None:
    graph = import_graph()
    importers = direct_lightning_importers(graph)
    assert any(
        m.startswith("lightning_lplr.callbacks") for m in importers
    )  # the check sees Lightning imports
    functional = [
        m for m in MODULES if m == "lightning_lplr.functional" or m.startswith("lightning_lplr.functional.")
    ]
    assert len(functional) >= 6
    for module in functional:
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # anywhere in the file, function bodies included
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in imported_names(node, module):
                    assert name.split(".")[0] not in LIGHTNING, f"{module} imports {name}"
        # ... nor through a module of this package it loads at import.
        seen, todo = set(), [module]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            assert current not in importers, f"{module} loads {current}, which imports Lightning"
            todo.extend(graph[current])


def test_report_modules_do_not_import_torch_at_module_level() -> None:
    """The same rule as (a), statically: what the CLI can load imports no torch or Lightning at import."""
    graph = import_graph()
    seen, todo = set(), ["lightning_lplr.report.cli", "lightning_lplr.report", "lightning_lplr.report.plot"]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(graph[current])
    seen |= {m for m in MODULES if m == "lightning_lplr.report" or m.startswith("lightning_lplr.report.")}
    for module in sorted(seen):
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in module_level_imports(tree):
            for name in imported_names(node, module):
                assert name.split(".")[0] not in HEAVY, f"{module} imports {name} at module level"


def test_functional_exports_every_public_name_of_its_public_modules() -> None:
    """The package docstring's promise: each public module's ``__all__`` is exported lazily."""
    import importlib

    import lightning_lplr.functional as functional

    modules = "ntk spectrum pl rate region objective curvature linearization normalization memory"
    missing = [
        f"{module}.{name}"
        for module in modules.split()
        for name in importlib.import_module(f"lightning_lplr.functional.{module}").__all__
        if name not in functional.__all__
    ]
    assert not missing, f"add these to lightning_lplr/functional/__init__.py: {missing}"
    assert sorted(functional.__all__) == sorted(functional._LAZY)
    for name in functional.__all__:
        assert getattr(functional, name) is not None
