"""The OpenAI-compatible LLM endpoint's own pieces: agents call providers through the broker.

* ``context``, ``stages``, ``metering``, ``audit``, ``forward``: the LLM call's context and its
  own stages (the shared ones are in ``broker.stages``).
* ``broker.protocols.llm``: its formats (request, usage, the model catalogue, OpenAI-shaped
  errors).
* ``broker.pipeline.llm``: the pipeline of an LLM call, its order written in one function.
* ``broker.http.llm``: the thin Litestar handlers (``/v1/chat/completions``, ``/v1/models``,
  ``/v1/embeddings``).
* ``errors``: the refusals (their OpenAI-shaped answers are ``broker.protocols.llm.wire``).
"""
