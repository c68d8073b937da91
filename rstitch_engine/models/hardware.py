"""What the device computes fast: the dtype that ``dtype='auto'`` resolves to, and the processor's name."""

from __future__ import annotations

import os
import platform

import psutil
import torch


def native_bfloat16(device: torch.device | str) -> bool:
    """True where bfloat16 matmuls run in hardware: CUDA GPUs that support them, and CPUs with
    AVX512-BF16 or AMX. There, bfloat16 beats float32 for this workload, decodes and short multi-token
    catch-ups alike (benchmarks/default_pair.py measures both dtypes).
    Elsewhere (older CPUs) bfloat16 is emulated and slower, so float32 stays the choice."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype ``'auto'`` means on ``device``: bfloat16 where it is native, else float32."""
    return torch.bfloat16 if native_bfloat16(device) else torch.float32


def allowed_cpus() -> int:
    """The logical CPUs this process may run on (its affinity where the OS reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """The CPU cores this process may run on, not counting a core's second hardware thread (SMT): llama.cpp's
    own default thread count for a decode. One thread per core is what a matrix-bound pass can use; a second
    thread on the same core competes for its vector units."""
    logical = allowed_cpus()
    total_logical = os.cpu_count() or logical
    physical = psutil.cpu_count(logical=False) or total_logical
    return max(1, min(logical, logical * physical // total_logical))


def processor_name(device: torch.device | str = "cpu") -> str:
    """What benchmarks record as the machine that ran them: the GPU's name for CUDA, else the CPU's
    model name (from /proc/cpuinfo where there is one), with whether bfloat16 is native on it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    bf16 = "native bfloat16" if native_bfloat16(device) else "no native bfloat16"
    return f"{name}, {os.cpu_count()} cores, {bf16}"
