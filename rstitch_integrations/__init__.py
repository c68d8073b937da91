"""rstitch_integrations: the stitched-decoding engine as a LangChain chat model and a LlamaIndex LLM.

Import the adapter you need (each needs only its own framework):

* ``rstitch_integrations.langchain.ChatRStitch`` and ``rstitch_integrations.callbacks.RStitchCallbackHandler``
* ``rstitch_integrations.llamaindex.RStitchLLM`` and ``rstitch_integrations.llamaindex_events.RStitchEventHandler``

Framework-free and shared by both: ``core`` (options, a call's preparation and decoding),
``prompt`` (messages and tools to chat-template input), ``answer_parsing`` (streamed text to content,
reasoning and tool calls), ``tool_calls`` (the ``<tool_call>`` wire format, its one owner),
``constrained`` (the grammar of a tools or JSON answer) and ``accounting`` (the cost ledger).
"""
