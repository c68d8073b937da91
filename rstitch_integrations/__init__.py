"""rstitch_integrations: the stitched-decoding engine as a LangChain chat model and a LlamaIndex LLM.

Import the adapter you need (each needs only its own framework):

* ``rstitch_integrations.langchain.ChatRStitch`` and ``rstitch_integrations.callbacks.RStitchCallbackHandler``
* ``rstitch_integrations.llamaindex.RStitchLLM`` and ``rstitch_integrations.llamaindex_events.RStitchEventHandler``

``chat_format`` (messages, tools, tool-call and reasoning parsing) and ``accounting`` (the cost
ledger) are framework-free and shared by both.
"""
