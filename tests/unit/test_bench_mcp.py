"""The MCP cost benchmark runs and measures every piece it names (its numbers are not judged
here: speed lives in benchmarks/)."""

from __future__ import annotations

from benchmarks import mcp_costs


def test_the_mcp_cost_benchmark_measures_each_piece() -> None:
    costs = mcp_costs.main(["--number", "20"])
    assert len(costs) == 6 and all(us > 0 for us in costs.values())
