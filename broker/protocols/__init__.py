"""The formats of what the broker mediates, with no I/O: what each protocol's stages parse,
judge and answer in.

* ``a2a``: A2A operations, how a request's parameters are read, error shapes on the wire,
  the broker's ListTasks page tokens.

The LLM endpoint's formats (request envelope, usage, model catalogue, OpenAI error shapes) are in
``broker.llm`` beside its stages.
"""
