"""The OpenAI-compatible LLM formats, with no I/O: the request envelope (``request``), usage and
its streamed metering (``usage``), the model catalogue (``catalog``) and OpenAI-shaped error
answers (``wire``)."""
