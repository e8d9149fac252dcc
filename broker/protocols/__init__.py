"""The formats of what the broker mediates, with no I/O: what each protocol's stages parse,
judge and answer in.

* ``a2a``: A2A operations, how a request's parameters are read, error shapes on the wire,
  the broker's ListTasks page tokens, what an agent may answer.
* ``llm``: the OpenAI-compatible endpoint's request envelope, usage, model catalogue and error
  shapes.
* ``sse`` (server-sent events relayed event by event) and ``jsonlimits`` (structural checks on
  JSON bytes before decoding), which both protocols use.
"""
