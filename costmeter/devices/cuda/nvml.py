"""NVML helpers: open one GPU, read its identity, clocks, temperature, throttle reasons,
memory, power and total energy.

The NVML module (``pynvml``, from the ``nvidia-ml-py`` distribution) is a constructor argument
everywhere, so tests hand in a fake with the same function names. Each reading translates NVML
errors into ``None`` (for optional figures) or :class:`UnavailableError` (when nothing works).

Device indices are CUDA indices, as torch numbers devices. NVML numbers devices in PCI order and
ignores ``CUDA_VISIBLE_DEVICES``; :func:`resolve_nvml_target` maps one to the other (by UUID when
the caller knows it, else through ``CUDA_VISIBLE_DEVICES``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from costmeter.errors import UnavailableError

NVML_INSTALL_HINT = "pip install 'costmeter[gpu]' (the nvidia-ml-py package)"

# Bit -> name for nvmlDeviceGetCurrentClocksEventReasons (formerly ...ThrottleReasons).
THROTTLE_REASON_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}

# Reasons that mean the GPU ran slower than it could for thermal or power reasons. Idle, the
# application-clock setting, sync boost and display clocks are recorded but do not count.
THROTTLING_REASONS: frozenset[str] = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)


def decode_throttle_reasons(mask: int) -> list[str]:
    """Names of the bits set in an NVML clocks-event (throttle) reason mask, lowest bit first.
    Unknown bits are named ``unknown_0x...`` rather than dropped."""
    names: list[str] = []
    bit = 1
    remaining = int(mask)
    while remaining:
        if remaining & bit:
            names.append(THROTTLE_REASON_BITS.get(bit, f"unknown_{bit:#x}"))
            remaining &= ~bit
        bit <<= 1
    return names


def load_nvml(nvml: Any | None = None) -> Any:
    """The NVML module: ``nvml`` if given, else ``import pynvml``. UnavailableError if missing."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError as exc:
        raise UnavailableError(f"NVML bindings are not installed ({exc}); {NVML_INSTALL_HINT}") from exc
    return pynvml


def is_not_supported(nvml: Any, exc: BaseException) -> bool:
    """True when ``exc`` is NVML's NOT_SUPPORTED error (the GPU lacks this counter)."""
    return getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3)


def resolve_nvml_target(
    cuda_index: int, uuid: str | None = None, env: Mapping[str, str] | None = None
) -> int | str:
    """What to hand NVML for CUDA device ``cuda_index``: a UUID string or an NVML index.

    ``uuid`` (from ``torch.cuda.get_device_properties(i).uuid``) wins. Otherwise entry
    ``cuda_index`` of ``CUDA_VISIBLE_DEVICES`` (an index or a ``GPU-...`` UUID); otherwise the
    index itself. ``CUDA_DEVICE_ORDER=FASTEST_FIRST`` on mixed GPUs is only resolved by UUID.
    """
    if uuid:
        text = str(uuid)
        return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if cuda_index < len(entries):
            entry = entries[cuda_index]
            return int(entry) if entry.isdigit() else entry
    return cuda_index


class NvmlDevice:
    """One GPU seen through NVML. Open it with :meth:`open`; close it with :meth:`close`."""

    def __init__(self, nvml: Any, handle: Any, label: str) -> None:
        self.nvml = nvml
        self.handle = handle
        self.label = label
        self._closed = False

    @classmethod
    def open(
        cls,
        cuda_index: int = 0,
        nvml: Any | None = None,
        uuid: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> NvmlDevice:
        """Initialise NVML and get the handle for CUDA device ``cuda_index``.

        Raises UnavailableError (with the reason) when the bindings, the driver or the device
        are missing."""
        module = load_nvml(nvml)
        try:
            module.nvmlInit()
        except module.NVMLError as exc:
            raise UnavailableError(
                f"NVML could not start ({exc}): no NVIDIA driver is loaded on this machine"
            ) from exc
        target = resolve_nvml_target(cuda_index, uuid, env)
        try:
            if isinstance(target, str):
                handle = module.nvmlDeviceGetHandleByUUID(target)
            else:
                handle = module.nvmlDeviceGetHandleByIndex(target)
        except module.NVMLError as exc:
            count = _safe(module, getattr(module, "nvmlDeviceGetCount", None))
            module.nvmlShutdown()
            raise UnavailableError(
                f"NVML has no GPU {target!r} for cuda:{cuda_index} ({exc}; NVML sees {count} GPU(s)); "
                "check CUDA_VISIBLE_DEVICES and the device index"
            ) from exc
        return cls(module, handle, f"cuda:{cuda_index}")

    def close(self) -> None:
        """Release this NVML reference (NVML counts nvmlInit/nvmlShutdown pairs)."""
        if not self._closed:
            self._closed = True
            self._read("nvmlShutdown")

    # -- identity and state ----------------------------------------------------------------

    def name(self) -> str | None:
        """Marketing name, e.g. ``NVIDIA H100 80GB HBM3``."""
        return _text(self._read("nvmlDeviceGetName", self.handle))

    def driver_version(self) -> str | None:
        """Kernel driver version, e.g. ``550.54.15``."""
        return _text(self._read("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> str | None:
        """Highest CUDA version the driver supports, e.g. ``12.4`` (NVML reports 12040)."""
        raw = self._read("nvmlSystemGetCudaDriverVersion")
        if raw is None:
            return None
        value = int(raw)
        return f"{value // 1000}.{(value % 1000) // 10}"

    def sm_clock_mhz(self) -> int | None:
        """Current SM clock (MHz)."""
        return _int(self._read("nvmlDeviceGetClockInfo", self.handle, self._const("NVML_CLOCK_SM", 1)))

    def max_sm_clock_mhz(self) -> int | None:
        """Maximum SM clock (MHz)."""
        return _int(
            self._read("nvmlDeviceGetMaxClockInfo", self.handle, self._const("NVML_CLOCK_SM", 1))
        )

    def mem_clock_mhz(self) -> int | None:
        """Current memory clock (MHz)."""
        return _int(
            self._read("nvmlDeviceGetClockInfo", self.handle, self._const("NVML_CLOCK_MEM", 2))
        )

    def temperature_c(self) -> int | None:
        """GPU die temperature (degrees Celsius)."""
        return _int(
            self._read("nvmlDeviceGetTemperature", self.handle, self._const("NVML_TEMPERATURE_GPU", 0))
        )

    def throttle_mask(self) -> int | None:
        """Raw clocks-event reason bit mask, or None when NVML cannot report it."""
        fn = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            self.nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        if fn is None:
            return None
        return _int(_safe(self.nvml, fn, self.handle))

    def throttle_reasons(self) -> list[str] | None:
        """Decoded throttle reasons (see :data:`THROTTLE_REASON_BITS`), or None if unreadable."""
        mask = self.throttle_mask()
        return None if mask is None else decode_throttle_reasons(mask)

    # -- memory -----------------------------------------------------------------------------

    def memory_used_bytes(self) -> int | None:
        """Memory in use on the whole device, all processes and the driver's reserve (bytes)."""
        info = self._read("nvmlDeviceGetMemoryInfo", self.handle)
        return None if info is None else _int(getattr(info, "used", None))

    def memory_total_bytes(self) -> int | None:
        """Device memory capacity (bytes)."""
        info = self._read("nvmlDeviceGetMemoryInfo", self.handle)
        return None if info is None else _int(getattr(info, "total", None))

    def process_used_bytes(self, pid: int | None = None) -> int | None:
        """Device memory used by process ``pid`` (default: this one), in bytes.

        None when NVML does not list the process (in a container NVML may show host PIDs) or
        does not report its usage; 0 is never guessed."""
        pid = os.getpid() if pid is None else pid
        procs = self._read("nvmlDeviceGetComputeRunningProcesses", self.handle)
        if procs is None:
            return None
        used = [getattr(p, "usedGpuMemory", None) for p in procs if getattr(p, "pid", None) == pid]
        known = [int(u) for u in used if u is not None]
        return sum(known) if known else None

    def memory_figures(self) -> dict[str, int]:
        """``nvml_process_used_bytes`` and ``nvml_device_used_bytes`` (MemoryInfo field names);
        a figure NVML cannot give is left out, never guessed."""
        figures: dict[str, int] = {}
        process, device = self.process_used_bytes(), self.memory_used_bytes()
        if process is not None:
            figures["nvml_process_used_bytes"] = process
        if device is not None:
            figures["nvml_device_used_bytes"] = device
        return figures

    # -- power and energy (errors propagate: the energy meter needs to tell NOT_SUPPORTED apart)

    def total_energy_mj(self) -> int:
        """Total energy since the driver loaded (mJ; Volta and newer). Raises NVMLError."""
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def power_mw(self) -> int:
        """Current board power draw (mW). Raises NVMLError."""
        return int(self.nvml.nvmlDeviceGetPowerUsage(self.handle))

    def power_limit_w(self) -> float | None:
        """Enforced power limit (W)."""
        raw = self._read("nvmlDeviceGetPowerManagementLimit", self.handle)
        return None if raw is None else int(raw) / 1000.0

    def info(self) -> dict[str, Any]:
        """Everything readable about the GPU now, for the run's environment. Fields NVML cannot
        report are None."""
        return {
            "gpu_name": self.name(),
            "gpu_driver_version": self.driver_version(),
            "cuda_driver_version": self.cuda_driver_version(),
            "gpu_sm_clock_mhz": self.sm_clock_mhz(),
            "gpu_max_sm_clock_mhz": self.max_sm_clock_mhz(),
            "gpu_mem_clock_mhz": self.mem_clock_mhz(),
            "gpu_temperature_c": self.temperature_c(),
            "gpu_power_limit_w": self.power_limit_w(),
            "gpu_memory_total_bytes": self.memory_total_bytes(),
            "gpu_throttle_reasons": self.throttle_reasons(),
        }

    def _read(self, function_name: str, *args: Any) -> Any:
        """Call NVML function ``function_name``; None if the bindings lack it or NVML errs."""
        return _safe(self.nvml, getattr(self.nvml, function_name, None), *args)

    def _const(self, name: str, default: int) -> int:
        return int(getattr(self.nvml, name, default))


def gpu_environment(
    cuda_index: int = 0, nvml: Any | None = None, uuid: str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """GPU name, driver, CUDA version, clocks and temperature of ``cuda:N`` for the environment
    record; ``{"gpu_nvml_unavailable": reason}`` when NVML cannot be read."""
    try:
        device = NvmlDevice.open(cuda_index, nvml=nvml, uuid=uuid, env=env)
    except UnavailableError as exc:
        return {"gpu_nvml_unavailable": str(exc)}
    try:
        return device.info()
    finally:
        device.close()


def _safe(nvml: Any, fn: Any, *args: Any) -> Any:
    """Call an NVML function; None on any NVMLError (the figure is then unknown)."""
    if fn is None:
        return None
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
