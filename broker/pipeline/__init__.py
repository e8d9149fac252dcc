"""The pipelines every mediated call runs through. Start reading here.

* ``stage``: the stage contract (``(ctx, call_next) -> Outcome``), ``fold``, and ``holding``,
  the one way a stage holds something (budget, fan-out slot, bulkhead place) until the call ends.
* ``a2a``: the order of an A2A request's stages, each with why it stands where it does.
* ``llm``: the same for an LLM call (OpenAI-compatible endpoint).

The stages themselves live in ``broker.stages`` (shared by every protocol, and A2A's own) and
in each protocol's package (``broker.llm``); the composition root (``broker.runtime``) builds
them once and hands them to these functions.
"""
