import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_engine():
    """The real default pair (SmolLM2-135M-Instruct + its distilled draft), loaded once per session."""
    from rstitch_engine import shared_engine

    return shared_engine()


@pytest.fixture(scope="session")
def real_engine_float32(real_engine):
    """The real default pair in float32, for outputs pinned token for token: ``real_engine`` follows
    ``dtype='auto'``, which is bfloat16 on CPUs with native bf16 matmuls and float32 elsewhere."""
    from rstitch_engine import shared_engine

    return real_engine if real_engine.pair.llm.dtype == torch.float32 else shared_engine(dtype="float32")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a loaded 2-core machine a second one stalls every small op
    (tiny-model distillation took 15 s instead of 0.5 s). Use with ``pytest.mark.usefixtures``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
