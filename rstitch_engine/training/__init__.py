"""Training-only code: the distilled draft and the R-Stitch+ router.

``distill`` trains a draft cut from the LLM on the LLM's own answers to ``prompt_pool``'s prompts;
``train_router`` trains the learned router with DAPO on rollouts of the real engine, using the
trainable network and sampling policy of ``router_policy``. What these produce (a draft folder, a
router folder) is read back by ``rstitch_engine.models.draft`` and
``rstitch_engine.decoding.learned_router``, which never import this package.

Invariant: nothing outside ``training`` and ``cli`` imports it.
"""
