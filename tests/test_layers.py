"""The design's layer rules (the data flows one way), checked with import-linter's contracts in
pyproject.toml: a new import that crosses a layer boundary fails this test."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install 'costmeter[dev]')")
    return subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold() -> None:
    proc = _lint_imports()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """The contracts can fail: a models module importing the harness breaks one."""
    bad = ROOT / "costmeter" / "models" / "_layer_probe.py"
    bad.write_text("from costmeter.harness import config  # noqa: F401\n")
    try:
        proc = _lint_imports()
    finally:
        bad.unlink()
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout


def test_the_cli_uses_the_public_predictor_api_and_every_public_name_resolves() -> None:
    import ast

    import costmeter.predictors as predictors

    for path in (ROOT / "costmeter" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("costmeter.predictors."):
                raise AssertionError(f"{path.name} imports {node.module}; use costmeter.predictors")
    for name in predictors.__all__:
        assert getattr(predictors, name) is not None, name


def test_importing_the_predictor_package_loads_no_heavy_library() -> None:
    code = ("import sys, costmeter.predictors; "
            "print(sorted(m for m in ('sklearn', 'torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_working_folder_paths_are_named_in_one_place() -> None:
    """No module outside costmeter/workdir.py spells the working folder's sub-folders."""
    import re

    spelled = re.compile(r"""(workdir|wd|self\.workdir)\)? */ *["'](cache|kernels|lut|tmp|spool|probes)["']""")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "costmeter").rglob("*.py")
                 if p.name != "workdir.py"
                 for n, line in enumerate(p.read_text().splitlines(), start=1) if spelled.search(line)]
    assert offenders == []
