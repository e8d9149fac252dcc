"""The MCP cost benchmark runs and measures every piece it names (its numbers are not judged
here: speed lives in benchmarks/)."""

from __future__ import annotations

import httpx

from benchmarks import mcp_costs, mcp_overhead, mcp_upstream
from benchmarks.loadgen import WrkResult


def test_the_mcp_cost_benchmark_measures_each_piece() -> None:
    costs = mcp_costs.main(["--number", "20"])
    assert len(costs) == 6 and all(us > 0 for us in costs.values())


async def test_the_mcp_upstream_answers_requests_and_notifications() -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=mcp_upstream.app),
                             base_url="http://upstream.test")
    async with http:
        call = await http.post("/mcp", content=mcp_overhead.CALL)
        listed = await http.post("/mcp", content=mcp_overhead.LIST)
        note = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/x"})
    assert call.json()["result"]["content"][0]["text"] == "done"
    assert len(listed.json()["result"]["tools"]) == 50
    assert note.status_code == 202


def test_the_overhead_table_names_the_load_and_every_case() -> None:
    result = WrkResult(requests=100, duration_s=1.0, errors=0, p50_ms=1.0, p99_ms=2.0)
    rows = [mcp_overhead.Row("mcp-call", result, 250.0), mcp_overhead.Row("mcp-direct", result,
                                                                          None)]
    text = mcp_overhead.table(rows, (1.0, 2.0, 3.0), 16)
    assert "load average during the run: 1.00 2.00 3.00" in text
    assert "| mcp-call | 100 | 1.00 | 2.00 | 0 | 250 |" in text and "| mcp-direct |" in text
