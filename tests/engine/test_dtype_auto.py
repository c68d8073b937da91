"""dtype='auto': bfloat16 where the device computes it natively, float32 elsewhere; the cost model
behind speedup estimates is the one calibrated for the dtype that runs."""

from __future__ import annotations

import pytest
import torch

from rstitch_engine import GenerationSettings, ModelSpec
from rstitch_engine.models.cost_model import shipped_cost_model
from rstitch_engine.models.hardware import auto_dtype, native_bfloat16, processor_name


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (False, False, torch.float32),
    (True, False, torch.bfloat16),
    (False, True, torch.bfloat16),
])
def test_auto_is_bfloat16_exactly_on_cpus_with_native_bf16_matmuls(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bfloat16("cpu") == (expected == torch.bfloat16)
    assert ModelSpec("any", device="cpu").torch_dtype() == expected
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        assert ModelSpec("any", device="cpu", dtype=name).torch_dtype() == dtype  # an explicit dtype always wins


def test_a_torch_without_the_cpu_probes_gets_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert auto_dtype("cpu") == torch.float32


@pytest.mark.parametrize("native", [False, True])
def test_benchmarks_name_the_cpu_and_whether_its_bfloat16_is_native(monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    name = processor_name("cpu")
    assert name.endswith(", native bfloat16" if native else ", no native bfloat16")
    assert " cores, " in name and not name.startswith(",")


@pytest.mark.real_model
def test_the_default_pair_loads_in_the_auto_dtype_and_estimates_with_its_cost_model(real_engine):
    dtype = auto_dtype("cpu")
    assert real_engine.pair.llm.dtype == real_engine.pair.slm.dtype == dtype
    shipped = shipped_cost_model(real_engine.pair.slm.name, real_engine.pair.llm.name, "cpu", dtype)
    assert shipped is not None, f"no cost model of the default pair is shipped for cpu in {dtype}"
    assert real_engine._llm_history.model == shipped
    result = real_engine.generate([{"role": "user", "content": "What is the capital of France?"}],
                                  GenerationSettings(max_new_tokens=12))
    assert "Paris" in result.text
    assert result.stats.speedup_basis == "estimated" and result.stats.speedup > 0


@pytest.mark.parametrize(("allowed", "logical", "physical", "expected"), [
    (2, 2, 2, 2),    # this machine: two cores, one hardware thread each
    (8, 8, 4, 4),    # SMT: two threads per core
    (4, 8, 4, 2),    # pinned to half the logical CPUs of an SMT machine
    (1, 8, 4, 1),
    (16, 16, None, 16),  # psutil cannot tell: every logical CPU
])
def test_physical_cores_counts_cores_not_hardware_threads(monkeypatch, allowed, logical, physical, expected):
    import os

    import psutil

    from rstitch_engine.models.hardware import physical_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(allowed)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: logical)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: physical)
    assert physical_cores() == expected
