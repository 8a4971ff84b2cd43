"""Shared fixtures: an isolated working folder and store for every test that asks for one."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder; COSTMETER_HOME points at it and COSTMETER_STORE is unset."""
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.setenv("COSTMETER_HOME", str(wd))
    monkeypatch.delenv("COSTMETER_STORE", raising=False)
    return wd
