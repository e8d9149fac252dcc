"""The OpenAI-compatible LLM endpoint's own pieces: agents call providers through the broker.

* ``catalog``: the model catalogue (its settings are ``broker.settings_llm``).
* ``context``, ``request``, ``stages``, ``metering``, ``usage``, ``audit``, ``forward``: the
  LLM call's context and its own stages (the shared ones are in ``broker.stages``).
* ``broker.pipeline.llm``: the pipeline of an LLM call, its order written in one function.
* ``broker.http.llm``: the thin Litestar handlers (``/v1/chat/completions``, ``/v1/models``,
  ``/v1/embeddings``).
* ``errors`` and ``wire``: the refusals and their OpenAI-shaped answers.
"""
