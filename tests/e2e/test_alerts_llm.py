"""The alerts of LLM traffic through a real broker process: a model's first use, and the first
use of the edge from an agent to a model (the same rules as A2A edges)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import openai
import pytest

from testkit.brokers import start_broker
from testkit.config import BrokerConfig
from testkit.procs import free_port

from .test_llm import MODEL, PROVIDER_KEY, PROVIDER_KEY_ENV, _llm_tables, fake_provider

pytestmark = pytest.mark.e2e
__all__ = ["fake_provider"]  # the fake provider's fixture, one per module


async def test_a_model_s_first_use_and_an_agent_s_first_call_to_it(
    tmp_path: Path, fake_provider: str
) -> None:
    config = _llm_tables(BrokerConfig(port=free_port()), f"{fake_provider}/v1")
    credential = secrets.token_urlsafe(18)
    config.identities({"alice": credential, "bob": secrets.token_urlsafe(18)})
    with start_broker(config, log_dir=tmp_path, env={PROVIDER_KEY_ENV: PROVIDER_KEY}) as broker:
        client = openai.AsyncOpenAI(
            base_url=f"{broker.url}/v1", api_key=credential, max_retries=0,
            http_client=httpx.AsyncClient(trust_env=False, timeout=10),
        )  # fmt: skip
        for _ in range(2):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        found: list[dict[str, object]] = []
        async with httpx.AsyncClient(headers=broker.admin_headers, timeout=10) as http:
            deadline = time.monotonic() + 15
            while len(found) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                found = (await http.get(f"{broker.url}/admin/alerts")).json()["alerts"]
    rules = sorted((str(a["rule"]), str(a["subject"])) for a in found)
    assert rules == [("new_edge", f"alice>model:{MODEL}"), ("new_model", f"model:{MODEL}")]
