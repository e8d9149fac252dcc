"""A tiny, fast OpenAI-compatible provider: a raw ASGI app, so the provider is never the bottleneck.

    python -m benchmarks.fake_llm --port N [--model bench-model]

``POST /v1/chat/completions`` answers every request with the same non-streamed chat completion
(usage included, so a gateway can settle what was used); ``GET /v1/models`` lists the one
model; ``GET /_ready`` answers once serving. It reads no part of the request: it is a load
target, not a model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable

from benchmarks.upstream import Receive, Scope, Send, reply, serve

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
ANSWER_TEXT = "echo: hello"


def completion(model: str) -> bytes:
    """The one chat completion this provider gives."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER_TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        },
        separators=(",", ":"),
    ).encode()


def models(model: str) -> bytes:
    entry = {"id": model, "object": "model", "created": 1700000000, "owned_by": "bench"}
    return json.dumps({"object": "list", "data": [entry]}, separators=(",", ":")).encode()


async def _drain(receive: Receive) -> None:
    while (await receive()).get("more_body"):
        pass


def make_app(model: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    answers = {
        ("POST", CHAT_PATH): completion(model),
        ("GET", MODELS_PATH): models(model),
        ("GET", "/_ready"): b'{"status":"ok"}',
    }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to set up
        body = answers.get((scope["method"], scope["path"]))
        if body is None:
            await reply(send, 404, b'{"error":{"message":"not found","code":"not_found"}}')
            return
        await _drain(receive)
        await reply(send, 200, body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-model")
    args = parser.parse_args()
    serve(make_app(args.model), args.port)


if __name__ == "__main__":
    main()
