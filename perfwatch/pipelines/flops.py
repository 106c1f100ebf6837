"""FLOP counting and model FLOP utilization (MFU) against known GPUs' peak FLOP/s.

MFU = achieved FLOP/s / the device's dense peak for the precision in use. Peaks are
the vendor's datasheet numbers *without* structured sparsity (datasheets print the
2:4-sparsity figure with an asterisk; we halve it). An unknown device has no peak, so
its MFU is None and reads "unknown", never a made-up number; a CPU is always unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

PRECISIONS = ("bf16", "tf32", "fp32")
TERA = 1e12


@dataclass(frozen=True)
class GpuPeak:
    """Dense peak FLOP/s of one GPU model; None where the precision has no tensor-core path."""

    name: str
    pattern: str  # regex searched (case-insensitively) in torch.cuda.get_device_name()
    bf16: float | None
    tf32: float | None
    fp32: float


# Sources (dense = sparsity figure / 2):
#  H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU datasheet: BF16 1979*/1513*/1671*,
#    TF32 989*/756*/835*, FP32 67/51/60 TFLOPS.
#  H200 SXM / NVL: NVIDIA H200 datasheet: BF16 1979*/1671*, TF32 989*/835*, FP32 67/60.
#  GH200: NVIDIA GH200 datasheet: BF16 1979*, TF32 989*, FP32 67 (its "H200" would match).
#  A100 (SXM4 and PCIe, 40/80 GB): A100 datasheet: BF16 312, TF32 156, FP32 19.5.
#  A10 / A10G: A10 datasheet: BF16 125, TF32 62.5, FP32 31.2. NVIDIA publishes no
#    datasheet for the AWS-only A10G; the A10's numbers are used for it.
#  L4: L4 datasheet: BF16 242*, TF32 120*, FP32 30.3.  L40S: L40S datasheet: BF16 733*,
#    TF32 366*, FP32 91.6.
#  V100 SXM2 / PCIe: V100 datasheet: FP32 15.7 / 14; no BF16 or TF32 tensor cores.
#  T4: T4 datasheet: FP32 8.1; no BF16 or TF32 tensor cores.
#  RTX 4090: Ada (AD102) whitepaper: BF16 (FP32 accumulate) 165.2, TF32 82.6, FP32 82.6.
#  RTX 3090: Ampere GA102 whitepaper: BF16 (FP32 accumulate) 71, TF32 35.6, FP32 35.6.
# Order matters: the first pattern that matches wins (PCIe/NVL before the SXM default).
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H100 PCIe", r"H100.*PCIe", 1513 / 2 * TERA, 756 / 2 * TERA, 51 * TERA),
    GpuPeak("H100 NVL", r"H100.*NVL", 1671 / 2 * TERA, 835 / 2 * TERA, 60 * TERA),
    GpuPeak("H100 SXM", r"H100", 1979 / 2 * TERA, 989 / 2 * TERA, 67 * TERA),
    GpuPeak("GH200", r"GH200", 1979 / 2 * TERA, 989 / 2 * TERA, 67 * TERA),
    GpuPeak("H200 NVL", r"H200.*NVL", 1671 / 2 * TERA, 835 / 2 * TERA, 60 * TERA),
    GpuPeak("H200 SXM", r"H200", 1979 / 2 * TERA, 989 / 2 * TERA, 67 * TERA),
    GpuPeak("A100", r"A100", 312 * TERA, 156 * TERA, 19.5 * TERA),
    GpuPeak("A10G", r"A10G", 125 * TERA, 62.5 * TERA, 31.2 * TERA),
    GpuPeak("A10", r"\bA10\b", 125 * TERA, 62.5 * TERA, 31.2 * TERA),
    GpuPeak("L40S", r"L40S", 733 / 2 * TERA, 366 / 2 * TERA, 91.6 * TERA),
    GpuPeak("L4", r"\bL4\b", 242 / 2 * TERA, 120 / 2 * TERA, 30.3 * TERA),
    GpuPeak("V100 PCIe", r"V100.*PCIE", None, None, 14 * TERA),
    GpuPeak("V100 SXM2", r"V100", None, None, 15.7 * TERA),
    GpuPeak("T4", r"\bT4\b", None, None, 8.1 * TERA),
    GpuPeak("RTX 4090", r"RTX 4090", 165.2 * TERA, 82.6 * TERA, 82.6 * TERA),
    GpuPeak("RTX 3090", r"RTX 3090", 71 * TERA, 35.6 * TERA, 35.6 * TERA),
)


def lookup_gpu(device_name: str | None) -> GpuPeak | None:
    """The table entry for a ``torch.cuda.get_device_name()`` string, or None if unknown."""
    if not device_name:
        return None
    for peak in GPU_PEAKS:
        if re.search(peak.pattern, device_name, re.IGNORECASE):
            return peak
    return None


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of ``device_name`` at ``precision`` ("bf16", "tf32", "fp32").

    TF32 falls back to FP32 on GPUs without TF32 tensor cores (the math runs in FP32
    there); BF16 on such GPUs is emulated and has no meaningful peak: None.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    gpu = lookup_gpu(device_name)
    if gpu is None:
        return None
    if precision == "tf32":
        return gpu.tf32 if gpu.tf32 is not None else gpu.fp32
    return getattr(gpu, precision)


def mfu(achieved_flops_per_s: float, peak: float | None) -> float | None:
    """Model FLOP utilization in 0..1 (can exceed 1 only if the FLOP count is wrong); None without a peak."""
    if peak is None or peak <= 0:
        return None
    return achieved_flops_per_s / peak


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that ``fn()`` performs, counted by torch's FlopCounterMode (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
