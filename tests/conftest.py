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


@pytest.fixture(scope="session")
def live_server():
    """``serve(engine) -> base URL``: an ``rstitch serve`` app on ``engine`` (the default options), started on first
    use on a free port and kept for the session (one per engine); ``serve.services`` maps ``id(engine)`` to its
    ``StitchService``. All are shut down at the end of the session."""
    import contextlib

    from live import running_server

    from rstitch_integrations.core import StitchOptions
    from rstitch_server import StitchService

    urls: dict[int, str] = {}
    with contextlib.ExitStack() as stack:
        def serve(engine) -> str:
            if id(engine) not in urls:
                options = StitchOptions()
                service = StitchService(engine, options, options.model_name)
                stack.callback(service.shutdown)  # after the server below has stopped (callbacks run last-in first-out)
                urls[id(engine)] = stack.enter_context(running_server(service))
                serve.services[id(engine)] = service
            return urls[id(engine)]

        serve.services = {}
        yield serve


@pytest.fixture(params=["local", "remote"])
def adapter(request):
    """The adapters in each mode (``live.Adapter``): built in this process, then as clients of a live server
    on the same engine (``ChatRStitch(base_url=...)``, ``RStitchLLM(base_url=...)``); the server starts only when
    a remote test runs."""
    from live import Adapter

    if request.param == "local":
        return Adapter("local")
    return Adapter("remote", request.getfixturevalue("live_server"))


@pytest.fixture
def remote_adapter(live_server):
    """``live.Adapter`` in remote mode only, for tests of what only remote mode has (the server's side of a call)."""
    from live import Adapter

    return Adapter("remote", live_server)
