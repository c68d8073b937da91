"""The conventional import paths users search for are thin re-exports of the same classes."""

from __future__ import annotations


def test_langchain_rstitch_re_exports_the_adapter():
    import langchain_rstitch
    from rstitch_integrations import callbacks, langchain

    assert langchain_rstitch.ChatRStitch is langchain.ChatRStitch
    assert langchain_rstitch.get_rstitch_callback is callbacks.get_rstitch_callback


def test_llama_index_llms_rstitch_re_exports_the_adapter_and_keeps_llama_index_a_namespace():
    import llama_index.core

    import llama_index.llms.rstitch
    from rstitch_integrations import llamaindex

    assert llama_index.llms.rstitch.RStitchLLM is llamaindex.RStitchLLM
    assert llama_index.core.Settings is not None  # llama-index-core still resolves beside our portion
    assert not hasattr(llama_index, "__file__") or llama_index.__file__ is None  # a namespace package
