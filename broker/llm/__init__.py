"""The OpenAI-compatible LLM endpoint: agents call providers through the broker.

* ``config``: provider settings and the model catalogue.
* ``gateway``: the pipeline of an LLM call, its order written in one function.
* ``routes``: the thin Litestar handlers (``/v1/chat/completions``, ``/v1/models``,
  ``/v1/embeddings``).
* ``errors`` and ``wire``: the refusals and their OpenAI-shaped answers.
"""
