"""Live servers for tests: an ``rstitch serve`` app (uvicorn, 127.0.0.1, a free port) in a thread of the test process.

``running_server`` serves one ``StitchService``; the ``live_server`` fixture (tests/conftest.py) keeps one per
engine for the session, so the adapter tests run a second time in remote mode against the very engine the local
adapter uses (``adapter`` fixture: ``ChatRStitch(base_url=...)`` / ``RStitchLLM(base_url=...)``).

What stays local only, and why (these tests do not take ``adapter``):

* tests on a scripted engine (``scripted_chat`` / ``scripted`` fixtures: tool-call parsing, malformed calls,
  ``<think>`` spans, the scripted agent loops) and on ``RecordingEngine``: they replace or watch the engine object
  in this process, which a client of a server cannot do (the remote forms of the abandoned-stream and timeout
  tests check the server's ``in_flight`` instead);
* construction, option and cache-key tests that make no call (the mode changes nothing there), and engine
  loading/sharing (``load_engine``, ``max_batch_size``, ``llm_wait_steps``, ``dtype``): the server's, not the client's;
* ``router='llm'``/``'slm'``/``'learned'``: remote mode takes quality or threshold and refuses other routers (the
  server chooses them);
* OpenMP-team tests: they check threads of this process;
* ``get_num_tokens_from_messages`` / ``get_token_ids``: they run the local tokenizer (remote mode loads the pair
  for them).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(service: Any, api_key: str | None = None, timeout: float = 30) -> Iterator[str]:
    """Serve ``service`` (a ``StitchService``) on a free port in a thread; yields the base URL (``http://127.0.0.1:PORT``)."""
    from rstitch_server import create_app

    port = free_port()
    app = create_app(service, api_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout)


class Adapter:
    """Builds the adapters of one mode: ``local`` (the engine in this process) or ``remote`` (a live server on it).

    ``chat(**fields)`` / ``llm(**fields)`` take the adapters' own fields; ``engine=`` picks the engine (default:
    the shared default pair). In remote mode the fields go to ``ChatRStitch(base_url=...)`` /
    ``RStitchLLM(base_url=...)``, and the server runs that engine.
    """

    def __init__(self, mode: str, serve: Any = None) -> None:
        self.mode = mode
        self._serve = serve

    @property
    def remote(self) -> bool:
        return self.mode == "remote"

    def fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        if not self.remote:
            return fields
        from rstitch_engine import shared_engine

        fields = dict(fields)
        engine = fields.pop("engine", None) or shared_engine()
        return {"base_url": self._serve(engine), **fields}

    def chat(self, **fields: Any) -> Any:
        from rstitch_integrations.langchain import ChatRStitch

        return ChatRStitch(**self.fields(fields))

    def llm(self, **fields: Any) -> Any:
        from rstitch_integrations.llamaindex import RStitchLLM

        return RStitchLLM(**self.fields(fields))

    def service(self, engine: Any = None) -> Any:
        """The ``StitchService`` behind the remote server of ``engine`` (remote mode only)."""
        from rstitch_engine import shared_engine

        return self._serve.services[id(engine or shared_engine())]


def remote_is_slow() -> Any:
    """A mark for tests taking the ``adapter`` fixture whose remote run is long (tens of seconds on a loaded 2-core
    CPU): the local run stays in the default suite, the remote one is marked slow."""
    import pytest

    return pytest.mark.parametrize("adapter", ["local", pytest.param("remote", marks=pytest.mark.slow)], indirect=True)
