"""One DeviceSpec parses device strings; optional session features are declared protocols."""
from __future__ import annotations

import pytest

from costmeter.devices.base import (
    BlockTimedSession,
    HealthCheckedSession,
    Runtime,
    RuntimeDeclaration,
    get_runtime,
    is_synchronous,
)
from costmeter.errors import ConfigError
from costmeter.harness.config import DeviceSpec, RunConfig


@pytest.mark.parametrize(("text", "kind", "index", "remote"), [
    ("cpu", "cpu", 0, False), ("cuda", "cuda", 0, False), ("cuda:3", "cuda", 3, False),
    ("fake", "fake", 0, False), ("ssh://pi@board.local:2222", "ssh", 0, True),
    ("adb://R58M1234", "adb", 0, True),
])
def test_device_strings_parse_once(text: str, kind: str, index: int, remote: bool) -> None:
    spec = DeviceSpec.parse(text)
    assert (spec.kind, spec.index, spec.remote, str(spec)) == (kind, index, remote, text)
    assert RunConfig(model="tiny_mlp", device=text).device_spec == spec


def test_ssh_and_adb_targets_are_checked_when_the_config_is_built() -> None:
    assert DeviceSpec.parse("ssh://pi@board:2222").target.port == 2222
    assert DeviceSpec.parse("adb://R58M1234").target == "R58M1234"
    for bad, message in (("tpu", "unknown device 'tpu'"), ("cuda:x", "unknown device"),
                         ("ssh://pi@bad host", "bad host"), ("ssh://pi@board:99999", "bad port"),
                         ("adb://", "bad Android device")):
        with pytest.raises(ConfigError, match=message):
            RunConfig(model="tiny_mlp", device=bad)


def test_optional_session_features_are_declared_protocols() -> None:
    class Plain:
        def run_once(self) -> None: ...

    class Timed(Plain):
        synchronous = True

        def time_block(self, n: int) -> list[int]:
            return [1] * n

        def block_health(self) -> dict:
            return {"throttled": False}

    assert not isinstance(Plain(), BlockTimedSession) and not is_synchronous(Plain())
    assert isinstance(Timed(), BlockTimedSession) and isinstance(Timed(), HealthCheckedSession)
    assert is_synchronous(Timed())


def test_a_runtime_that_runs_in_a_device_tool_is_declared_not_prepared() -> None:
    """LiteRT over adb runs in benchmark_model on the phone: it is registered as a declaration
    (artifact, options, availability) and has no prepare that could only raise."""
    adb = get_runtime("adb", "litert")
    assert isinstance(adb, RuntimeDeclaration) and not isinstance(adb, Runtime)
    assert not hasattr(adb, "prepare")
    assert isinstance(get_runtime("cpu", "onnxruntime"), Runtime)
