"""Load the project's scripts (``benchmarks/*.py``, ``examples/*.py``) as modules for tests;
their sibling imports (``from accuracy_tables import ...``) resolve while they load."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "benchmarks") -> ModuleType:
    """``<folder>/<name>.py`` as the module ``name`` (registered in ``sys.modules``, which
    dataclasses need while their classes are made)."""
    where = str(ROOT / folder)
    sys.path.insert(0, where)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(where)
