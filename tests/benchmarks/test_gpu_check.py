"""The GPU check script end to end, as a device machine runs it, on tiny shapes on the CPU (``--smoke``).

CI has no GPU, so this is what keeps ``bash benchmarks/gpu_check.sh`` runnable without edits: the
same sections (machine, decode variants, exactness, trace replay), the same JSON and table, with
dynamo's eager backend in place of CUDA graphs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_script_runs_every_section_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--device", "cpu",
                          "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    for section in ("machine", "decode", "exactness", "replay"):
        assert "error" not in report[section] and "skipped" not in report[section], report[section]
    decode = report["decode"]
    assert set(decode) == {"slm", "llm"}
    assert all(row[f"{v}_ms"] > 0 for row in decode.values() for v in ("eager_dynamic", "eager_static", "compiled_static"))
    verdicts = {r["check"]: r["verdict"] for r in report["exactness"]}
    assert len(verdicts) == 10 and "logical" not in verdicts.values()
    assert all(v == "exact" for check, v in verdicts.items() if "tau=" in check)  # same kernels: exact
    assert all(r["tokens_match_ideal"] for r in report["replay"])
    assert set(report["goals"]) >= {"llm_compiled_vs_hbm_bound", "replay_efficiency_median"}
    assert "| SLM | tiny-s |" in run.stdout and "| trace | P / N |" in run.stdout
