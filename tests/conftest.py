"""Shared fixtures: an isolated working folder and store for every test that asks for one."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Children must be able to get Ctrl-C. A shell starts background jobs (`cmd &`, nohup)
    with SIGINT ignored, and an ignored signal stays ignored across exec, so the child
    processes of the Ctrl-C tests would ignore it too; a Python-level handler here is reset to
    the default in every child instead."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder; COSTMETER_HOME points at it and COSTMETER_STORE is unset."""
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.setenv("COSTMETER_HOME", str(wd))
    monkeypatch.delenv("COSTMETER_STORE", raising=False)
    return wd
