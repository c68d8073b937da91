import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_engine():
    """The real default pair (SmolLM2-135M-Instruct + its distilled draft), loaded once per session."""
    from rstitch_engine import shared_engine

    return shared_engine()
