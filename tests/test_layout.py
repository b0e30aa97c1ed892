"""The package layout holds: nothing heavy at import time, dependencies one way, modules small enough to read,
settings read only where documented (docs/architecture.md).

Run: .venv/bin/python -m pytest -q tests/test_layout.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "simme_common"
EVALUATION = {"metrics", "eval_generation", "scorecard", "metric_defs", "metrics_style", "metrics_model", "authorship", "gate"}


def _imports(path: Path) -> set[str]:
    """simme_common modules that `path` imports (relative imports resolved to dotted names under the package)."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    here = list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            out.add(".".join(base + ([node.module] if node.module else [])))
    return out


def _heavy_modules_after(statement: str) -> list[str]:
    """Heavy libraries in sys.modules after running `statement` in a fresh interpreter."""
    code = (f"import sys; {statement}; print([m for m in ('torch', 'transformers', 'datasets', 'pandas', 'peft', "
            f"'trl', 'llama_cpp') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_or_the_app_loads_no_model_library():
    assert _heavy_modules_after("import simme_common") == []
    assert _heavy_modules_after("import app") in ([], ["pandas"])  # gradio itself imports pandas


def test_serving_never_imports_evaluation_and_evaluation_never_imports_serving():
    for path in PACKAGE.rglob("*.py"):
        deps = _imports(path)
        name = path.relative_to(PACKAGE).with_suffix("").as_posix()
        if name.startswith("serving/"):
            assert not deps & EVALUATION, f"{name} imports evaluation code: {deps & EVALUATION}"
        if name in EVALUATION:
            assert not any(d.startswith("serving") for d in deps), f"{name} imports serving code: {deps}"


def test_modules_and_stage_scripts_stay_readable_in_one_sitting():
    long_modules = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    long_scripts = {p.name: n for p in ROOT.glob("0*_*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long_modules and not long_scripts, (long_modules, long_scripts)


def test_only_the_settings_module_reads_simme_variables():
    """Library code takes parameters; SIMME_CACHE (the shared cache, like HF_HOME) and the one hand-over to our
    patched llama.cpp are the documented exceptions."""
    allowed = {("settings", None), ("runtime", "SIMME_CACHE"), ("serving/llama_cpp", "SIMME_AMX_BF16_MIN_TOKENS")}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).with_suffix("").as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("SIMME_") \
                    and node.value.isupper():
                assert (name, None) in allowed or (name, node.value) in allowed, f"{name} names {node.value}"


def test_every_entry_point_prints_its_help():
    """`--help` prints usage everywhere: a bare % in a help text ("95% intervals") is a format error to argparse."""
    candidates = sorted([*ROOT.glob("0*.py"), ROOT / "app.py", *ROOT.glob("scripts/*.py"), *ROOT.glob("bench/*.py")])
    scripts = [p for p in candidates if 'if __name__ == "__main__"' in p.read_text(encoding="utf-8")]
    assert len(scripts) >= 12
    procs = {p.relative_to(ROOT): subprocess.Popen([sys.executable, str(p), "--help"], cwd=ROOT, text=True,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in scripts}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage:" in out, f"{name}: {err[-1500:]}"
