"""A small OpenAI-compatible fake provider on 127.0.0.1, for tests of the LLM endpoint.

Routes: ``POST /v1/chat/completions`` (streamed or not), ``GET /v1/models``,
``POST /v1/embeddings``. It records every request (path, Authorization header, body) and
answers with fixed usage (``PROMPT_TOKENS``, ``COMPLETION_TOKENS``); a stream's final chunk
carries usage only when the request set ``stream_options.include_usage``.

Behaviour switches (``FakeLlm.mode`` in process, or ``POST /_mode`` with JSON when run as
``python -m tests.e2e.fake_llm --port N``): ``omit_usage`` (no usage anywhere), ``hang`` (accept
and never answer), ``fail`` (answer with that HTTP status), ``echo`` (answer ``You said: `` and
the last message's text, streamed in pieces of ``piece`` characters). ``GET /_recorded`` returns
the recorded requests; ``GET /_ready`` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from testkit.procs import free_port

PROMPT_TOKENS = 12
COMPLETION_TOKENS = 5
EMBEDDING_TOKENS = 8
ANSWER_PIECES = ("Hel", "lo", " there")
ANSWER = "".join(ANSWER_PIECES)
MODELS = ("fake-small", "fake-large")


@dataclass
class Mode:
    omit_usage: bool = False
    hang: bool = False
    fail: int = 0
    echo: bool = False
    piece: int = 4


@dataclass
class Recorded:
    path: str
    authorization: str | None
    body: dict[str, Any]
    traceparent: str | None = None  # the trace context the broker passed on


@dataclass
class FakeLlm:
    mode: Mode = field(default_factory=Mode)
    recorded: list[Recorded] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_recorded", self._recorded)
        app.router.add_post("/_mode", self._set_mode)
        app.router.add_get("/_ready", self._ready)
        return app

    async def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 (a free port by default); returns the base URL (…/v1)."""
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.5)
        await self._runner.setup()
        port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await request.json()
        headers = request.headers
        self.recorded.append(
            Recorded(request.path, headers.get("Authorization"), body, headers.get("traceparent"))
        )
        if self.mode.hang:
            await asyncio.sleep(3600)
        if self.mode.fail:
            error = {"error": {"message": "fake failure", "type": "server_error"}}
            return web.json_response(error, status=self.mode.fail)
        return dict(body)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        if body.get("stream"):
            return await self._stream(request, body)
        answer = _completion(body["model"])
        answer["choices"] = [_choice({"role": "assistant", "content": self._answer(body)})]
        if not self.mode.omit_usage:
            answer["usage"] = _usage()
        return web.json_response(answer)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        options = body.get("stream_options") or {}
        with_usage = bool(options.get("include_usage")) and not self.mode.omit_usage
        text = self._answer(body)
        pieces = [text[i : i + self.mode.piece] for i in range(0, len(text), self.mode.piece)]
        pieces = pieces if self.mode.echo else list(ANSWER_PIECES)
        for chunk in _chunks(body["model"], with_usage, pieces):
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _answer(self, body: dict[str, Any]) -> str:
        if not self.mode.echo:
            return ANSWER
        return "You said: " + str(body["messages"][-1]["content"])

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        answer: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": body["model"],
        }
        if not self.mode.omit_usage:
            answer["usage"] = {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS}
        return web.json_response(answer)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _recorded(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.recorded])

    async def _set_mode(self, request: web.Request) -> web.Response:
        self.mode = Mode(**await request.json())
        return web.json_response(asdict(self.mode))

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def _completion(model: str, kind: str = "chat.completion") -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": kind, "created": 0, "model": model}


def _choice(message: dict[str, Any], key: str = "message", finish: str | None = "stop") -> Any:
    return {"index": 0, key: message, "finish_reason": finish}


def _usage() -> dict[str, int]:
    total = PROMPT_TOKENS + COMPLETION_TOKENS
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": total,
    }


def _chunks(model: str, with_usage: bool, pieces: Sequence[str]) -> list[dict[str, Any]]:
    deltas = [{"role": "assistant", "content": ""}, *({"content": p} for p in pieces)]
    chunks = [
        {**_completion(model, "chat.completion.chunk"), "choices": [_choice(d, "delta", None)]}
        for d in deltas
    ]
    chunks.append(
        {**_completion(model, "chat.completion.chunk"), "choices": [_choice({}, "delta")]}
    )
    if with_usage:
        for chunk in chunks:
            chunk["usage"] = None
        chunks.append(
            {**_completion(model, "chat.completion.chunk"), "choices": [], "usage": _usage()}
        )
    return chunks


async def _serve(port: int) -> None:
    fake = FakeLlm()
    await fake.start(port)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
