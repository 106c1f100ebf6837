"""NVML reader (nvidia-ml-py). An absent GPU or driver means absent data, never an error.

The NVML module is a parameter with the real ``pynvml`` as default, so tests on a
machine without a GPU can hand in a stand-in for the one thing it lacks.

``GpuSampler`` reads the dcgm-exporter default set that NVML exposes, in base units.
A reading a device does not support is ``None`` in its ``GpuSample``: the exporter
leaves such a metric out rather than exporting a made-up zero.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

log = logging.getLogger(__name__)

# Clock-event (formerly "throttle") reason bits, named as in nvml.h, lower-cased.
CLOCK_EVENT_REASONS = (
    ("gpu_idle", "nvmlClocksEventReasonGpuIdle"),
    ("applications_clocks_setting", "nvmlClocksEventReasonApplicationsClocksSetting"),
    ("sw_power_cap", "nvmlClocksEventReasonSwPowerCap"),
    ("hw_slowdown", "nvmlClocksEventReasonHwSlowdown"),
    ("sync_boost", "nvmlClocksEventReasonSyncBoost"),
    ("sw_thermal_slowdown", "nvmlClocksEventReasonSwThermalSlowdown"),
    ("hw_thermal_slowdown", "nvmlClocksEventReasonHwThermalSlowdown"),
    ("hw_power_brake_slowdown", "nvmlClocksEventReasonHwPowerBrakeSlowdown"),
    ("display_clock_setting", "nvmlClocksEventReasonDisplayClockSetting"),
)

# GPM metrics (Hopper and later), the NVML counterparts of dcgm-exporter's
# DCGM_FI_PROF_SM_ACTIVE, _PIPE_TENSOR_ACTIVE and _DRAM_ACTIVE; NVML gives percent.
GPM_METRICS = (
    ("sm_active_ratio", "NVML_GPM_METRIC_SM_UTIL"),
    ("tensor_active_ratio", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("dram_bandwidth_ratio", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
)

# Errors that will not go away on the next call: the field is not read again.
_PERMANENT_ERRORS = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")

_MAX_EVENTS_PER_SAMPLE = 64  # XID storms must not stall the sampler


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _init(nvml: ModuleType | None) -> ModuleType:
    if nvml is None:
        import pynvml as nvml  # type: ignore[no-redef]
    nvml.nvmlInit()
    return nvml


def load_nvml(nvml: ModuleType | None = None) -> ModuleType | None:
    """Initialised NVML module, or None (with one debug line) when there is no usable GPU."""
    try:
        return _init(nvml)
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError, ...
        log.debug("NVML unavailable: %s", exc)
        return None


def gpu_inventory(nvml: ModuleType | None = None) -> dict[str, Any] | None:
    """Model, count, memory and driver/CUDA versions of the visible GPUs, or None without one."""
    nvml = load_nvml(nvml)
    if nvml is None:
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        devices = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            devices.append(
                {
                    "index": i,
                    "name": _text(nvml.nvmlDeviceGetName(handle)),
                    "memory_total_bytes": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                }
            )
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        return {
            "count": count,
            "model": devices[0]["name"],
            "devices": devices,
            "driver": _text(nvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }
    except Exception as exc:
        log.warning("NVML answered but could not list GPUs: %s", exc)
        return None
    finally:
        _shutdown(nvml)


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:
        log.debug("nvmlShutdown: %s", exc)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one instant. ``None`` means the device does not expose the reading.

    ``*_total`` fields are cumulative counters; the others are gauges.
    ``process_memory_bytes`` holds (pid, bytes) for the watched PIDs using this GPU.
    """

    index: int
    name: str
    uuid: str | None = None
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    energy_joules_total: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    pcie_tx_bytes_per_second: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    clock_event_reasons: frozenset[str] | None = None
    ecc_corrected_errors_total: int | None = None
    ecc_uncorrected_errors_total: int | None = None
    xid_errors_total: int | None = None
    last_xid: int | None = None
    process_memory_bytes: tuple[tuple[int, int], ...] = ()
    sm_active_ratio: float | None = None
    tensor_active_ratio: float | None = None
    dram_bandwidth_ratio: float | None = None


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


@dataclass
class _Device:
    index: int
    handle: Any
    name: str
    uuid: str | None = None
    gpm_buffers: list[Any] | None = None  # [last, spare]; None: no GPM on this device
    gpm_primed: bool = False  # whether gpm_buffers[0] holds a reading to diff against
    xid_errors: int | None = None  # None: XID events not available on this device
    last_xid: int | None = None
    unsupported: set[str] = field(default_factory=set)


class GpuSampler:
    """Reads every visible GPU; ``open()`` gives None (one info line) where there is none.

    Not thread-safe: one sampler thread owns it. ``close()`` releases NVML.
    """

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._warned: set[str] = set()
        self._devices: list[_Device] = []
        for index, handle in enumerate(handles):
            device = _Device(index, handle, _text(nvml.nvmlDeviceGetName(handle)))
            uuid = self._read(device, "uuid", nvml.nvmlDeviceGetUUID, handle)
            device.uuid = None if uuid is None else _text(uuid)
            self._prepare_gpm(device)
            self._devices.append(device)
        self._events = self._register_xid_events()

    @classmethod
    def open(cls, nvml: ModuleType | None = None) -> GpuSampler | None:
        try:
            nvml = _init(nvml)
        except Exception as exc:  # no library, no driver, no pynvml
            log.info("GPU metrics absent: NVML unavailable (%s)", exc)
            return None
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            if handles:
                return cls(nvml, handles)
            log.info("GPU metrics absent: NVML sees no GPU")
        except nvml.NVMLError as exc:
            log.warning("GPU metrics absent: NVML could not list GPUs (%s)", exc)
        _shutdown(nvml)
        return None

    def close(self) -> None:
        """Free GPM buffers and the event set, and shut NVML down; safe to call twice."""
        nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        try:
            for device in self._devices:
                for buffer in device.gpm_buffers or ():
                    nvml.nvmlGpmSampleFree(buffer)
            if self._events is not None:
                nvml.nvmlEventSetFree(self._events)
        except nvml.NVMLError as exc:
            log.debug("NVML cleanup: %s", exc)
        finally:
            _shutdown(nvml)

    def sample(self, pids: Collection[int] = ()) -> tuple[GpuSample, ...]:
        """Every GPU now; ``pids`` selects whose GPU memory to report (the watched tree)."""
        self._drain_xid_events()
        return tuple(self._sample_device(device, set(pids)) for device in self._devices)

    def _sample_device(self, device: _Device, pids: set[int]) -> GpuSample:
        nvml, handle = self._nvml, device.handle

        def read(name: str, fn: Callable[..., Any], *args: Any) -> Any:
            return self._read(device, name, fn, handle, *args)

        util = read("utilization", nvml.nvmlDeviceGetUtilizationRates)
        memory = read("memory", nvml.nvmlDeviceGetMemoryInfo)
        reasons = read("clock_event_reasons", nvml.nvmlDeviceGetCurrentClocksEventReasons)
        processes = read("processes", nvml.nvmlDeviceGetComputeRunningProcesses) or ()
        return GpuSample(
            index=device.index,
            name=device.name,
            uuid=device.uuid,
            utilization_ratio=None if util is None else util.gpu / 100,
            memory_utilization_ratio=None if util is None else util.memory / 100,
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            power_watts=_scaled(read("power", nvml.nvmlDeviceGetPowerUsage), 1e-3),
            energy_joules_total=_scaled(read("energy", nvml.nvmlDeviceGetTotalEnergyConsumption), 1e-3),
            temperature_celsius=read("temperature", nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            sm_clock_hz=_scaled(read("sm_clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM), 1e6),
            memory_clock_hz=_scaled(read("memory_clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM), 1e6),
            pcie_tx_bytes_per_second=_scaled(
                read("pcie_tx", nvml.nvmlDeviceGetPcieThroughput, nvml.NVML_PCIE_UTIL_TX_BYTES), 1024
            ),
            pcie_rx_bytes_per_second=_scaled(
                read("pcie_rx", nvml.nvmlDeviceGetPcieThroughput, nvml.NVML_PCIE_UTIL_RX_BYTES), 1024
            ),
            clock_event_reasons=None if reasons is None else self._reason_names(reasons),
            ecc_corrected_errors_total=read(
                "ecc_corrected", nvml.nvmlDeviceGetTotalEccErrors,
                nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC,
            ),
            ecc_uncorrected_errors_total=read(
                "ecc_uncorrected", nvml.nvmlDeviceGetTotalEccErrors,
                nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC,
            ),
            xid_errors_total=device.xid_errors,
            last_xid=device.last_xid,
            process_memory_bytes=tuple(
                sorted(
                    (p.pid, int(p.usedGpuMemory))
                    for p in processes
                    if p.pid in pids and p.usedGpuMemory is not None  # None: not available (WDDM, MIG)
                )
            ),
            **self._gpm_ratios(device),
        )

    def _read(self, device: _Device, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None where the device cannot answer; unsupported calls are not repeated."""
        if name in device.unsupported:
            return None
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            if type(exc).__name__ in _PERMANENT_ERRORS:
                device.unsupported.add(name)
            elif name not in self._warned:  # transient (GPU lost, timeout): say so once, retry
                self._warned.add(name)
                log.warning("GPU %d: reading %s failed: %s", device.index, name, exc)
            return None

    def _reason_names(self, bits: int) -> frozenset[str]:
        return frozenset(name for name, constant in CLOCK_EVENT_REASONS if bits & getattr(self._nvml, constant))

    def _prepare_gpm(self, device: _Device) -> None:
        nvml = self._nvml
        support = self._read(device, "gpm", nvml.nvmlGpmQueryDeviceSupport, device.handle)
        if support is not None and support.isSupportedDevice:
            device.gpm_buffers = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]

    def _gpm_ratios(self, device: _Device) -> dict[str, float]:
        """GPM metrics over the interval since the previous call (none on the first)."""
        if device.gpm_buffers is None or "gpm" in device.unsupported:
            return {}
        nvml = self._nvml
        last, spare = device.gpm_buffers
        if self._read(device, "gpm", nvml.nvmlGpmSampleGet, device.handle, spare) is None:
            return {}
        primed, device.gpm_primed = device.gpm_primed, True
        device.gpm_buffers = [spare, last]
        if not primed:
            return {}
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1, request.sample2 = last, spare
        for slot, (_, constant) in enumerate(GPM_METRICS):
            request.metrics[slot].metricId = getattr(nvml, constant)
        if self._read(device, "gpm", nvml.nvmlGpmMetricsGet, request) is None:
            return {}
        return {
            name: request.metrics[slot].value / 100
            for slot, (name, _) in enumerate(GPM_METRICS)
            if request.metrics[slot].nvmlReturn == nvml.NVML_SUCCESS
        }

    def _register_xid_events(self) -> Any:
        """One event set for XID errors on every device that supports them, or None."""
        nvml = self._nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            log.debug("no NVML event set, XID errors absent: %s", exc)
            return None
        for device in self._devices:
            try:
                nvml.nvmlDeviceRegisterEvents(device.handle, nvml.nvmlEventTypeXidCriticalError, events)
                device.xid_errors = 0
            except nvml.NVMLError as exc:
                log.debug("GPU %d: XID events unavailable: %s", device.index, exc)
        return events

    def _drain_xid_events(self) -> None:
        """Count the XID events queued since the last sample, without waiting for new ones."""
        nvml = self._nvml
        if self._events is None:
            return
        by_index = {device.index: device for device in self._devices}
        for _ in range(_MAX_EVENTS_PER_SAMPLE):
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
                device = by_index.get(nvml.nvmlDeviceGetIndex(event.device))
            except nvml.NVMLError:  # NVMLError_Timeout: the queue is empty
                return
            if device is not None and device.xid_errors is not None:
                device.xid_errors += 1
                device.last_xid = int(event.eventData)
