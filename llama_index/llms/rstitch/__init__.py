"""LlamaIndex's conventional import path for rstitch: ``from llama_index.llms.rstitch import RStitchLLM``.

A thin re-export of ``rstitch_integrations.llamaindex`` (needs the ``llamaindex`` extra); the class is
the same object. ``llama_index`` and ``llama_index.llms`` stay namespace packages (no ``__init__.py``),
as every ``llama-index-llms-*`` package leaves them.
"""

from rstitch_integrations.llamaindex import RStitchLLM
from rstitch_integrations.llamaindex_events import RStitchEventHandler

__all__ = ["RStitchEventHandler", "RStitchLLM"]
