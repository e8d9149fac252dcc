"""The report section of scenario (s): every server's figures as ratios to stock uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.scenario_servers import servers_section
from benchmarks.targets import server_command


def point(scenario: str, c: int, rps: float, cpu: float) -> dict[str, Any]:
    return {"scenario": scenario, "concurrency": c, "rps": rps, "cpu_us_per_req": cpu,
            "p50_ms": 1.0, "p99_ms": 2.0, "rss_mb": 100.0, "errors": 0}  # fmt: skip


def test_ratios_are_to_stock_uvicorn_at_the_same_concurrency() -> None:
    results = {"points": [
        point("s-uvicorn", 16, 1000, 800), point("s-granian", 16, 900, 960),
        point("s-uvicorn", 64, 1200, 700), point("s-serve", 64, 1200, 714),
    ]}  # fmt: skip
    rows = {line.split(" | ")[0] + f"@{line.split(' | ')[1]}": line
            for line in servers_section(results) if line.startswith("| (s)")}  # fmt: skip
    granian = rows["| (s) broker, memory, Granian@16"].split(" | ")
    assert (granian[3], granian[5]) == ("0.90", "1.20")  # req/s and CPU per request
    serve = rows["| (s) broker, memory, `a2a-broker serve`@64"].split(" | ")
    assert (serve[3], serve[5]) == ("1.00", "1.02")


def test_without_scenario_s_the_section_says_how_to_get_it() -> None:
    assert "--scenarios s" in servers_section({"points": []})[0]


def test_stock_uvicorn_runs_the_broker_app_with_uvloop_and_httptools() -> None:
    argv, path = server_command("uvicorn", Path("b.toml"), 8080, 1)
    assert "broker.http.app:app_from_environment" in argv and path == []
    assert argv[argv.index("--loop") + 1] == "uvloop"
    assert argv[argv.index("--http") + 1] == "httptools"
