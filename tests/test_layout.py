"""The shape of the house: the runtime never imports the outer ring (the toy world, training, evaluation),
ComfyUI's nodes use planx_core's public API only, and no module grows past 450 lines."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "planx_core"
RUNTIME = ("plan", "files", "wan", "tatok", "planner", "semantic_branch", "diffusion", "semanticgen", "pipelines")
OUTER_RING = ("world", "training", "eval")
PUBLIC = {f"planx_core.{name}" for name in RUNTIME} | {"planx_core"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every planx_core import in a file, at any depth (lazy ones included)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names] if not node.module or node.level else []
            found += [(node.lineno, m) for m in [module, *names] if m.startswith("planx_core")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("planx_core")]
    return found


def _in_ring(module: str) -> bool:
    return any(module == f"planx_core.{r}" or module.startswith(f"planx_core.{r}.") for r in OUTER_RING)


def runtime_files() -> list[Path]:
    files = []
    for name in RUNTIME:
        path = CORE / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return files + [CORE / "__init__.py"]


def test_runtime_sources_never_import_the_outer_ring():
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in runtime_files()
        for line, module in _imports(path)
        if _in_ring(module)
    ]
    assert not bad, "the runtime imports the outer ring:\n" + "\n".join(bad)


def test_importing_the_runtime_loads_no_outer_ring_module():
    """What ComfyUI loads (every runtime subpackage, the generate command's code) leaves sys.modules free of the
    toy world, training and evaluation."""
    code = (
        "import sys\n"
        + "".join(f"import planx_core.{name}\n" for name in RUNTIME)
        + "import planx_core.pipelines.commands, planx_core.__main__\n"
        + "print('\\n'.join(m for m in sys.modules if m.startswith('planx_core.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "planx_core.pipelines.planx" in loaded and "planx_core.semanticgen.model" in loaded
    assert not [m for m in loaded if _in_ring(m)]


def test_the_outer_ring_check_can_fail():
    """The ring test sees lazy imports too: the training entry point imports the world, inside functions or not."""
    assert any(_in_ring(module) for _, module in _imports(CORE / "training" / "main.py"))
    assert any(_in_ring(module) for _, module in _imports(CORE / "eval" / "ablations.py"))


def test_nodes_use_the_public_api_only():
    bad = []
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for line, module in _imports(path):
            if module not in PUBLIC and module != "planx_core.semantic_branch":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "nodes/ reaches past planx_core's public API:\n" + "\n".join(bad)


@pytest.mark.parametrize("folder", ["planx_core", "nodes", "benchmarks", "scripts"])
def test_no_module_over_450_lines(folder):
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, f"split these modules: {long}"


RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (pip install -e .[dev] brings it)")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    done = subprocess.run([RUFF, *command, "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
