"""NVML reader (nvidia-ml-py). An absent GPU or driver means absent data, never an error.

The NVML module is a parameter with the real ``pynvml`` as default, so tests on a
machine without a GPU can hand in a stand-in for the one thing it lacks.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_nvml(nvml: ModuleType | None = None) -> ModuleType | None:
    """Initialised NVML module, or None (with one debug line) when there is no usable GPU."""
    try:
        if nvml is None:
            import pynvml as nvml  # type: ignore[no-redef]
        nvml.nvmlInit()
        return nvml
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
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
