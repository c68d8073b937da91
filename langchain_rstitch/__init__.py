"""LangChain's conventional import path for rstitch: ``from langchain_rstitch import ChatRStitch``.

A thin re-export of ``rstitch_integrations.langchain`` and its callbacks (needs the ``langchain``
extra); the classes are the same objects.
"""

from rstitch_integrations.callbacks import RStitchCallbackHandler, get_rstitch_callback
from rstitch_integrations.langchain import ChatRStitch

__all__ = ["ChatRStitch", "RStitchCallbackHandler", "get_rstitch_callback"]
