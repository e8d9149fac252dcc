"""benchmarks.reserve_ahead's reading of its rounds (decision 0109)."""

from __future__ import annotations

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.measure import Point
from benchmarks.reserve_ahead import report


def _p(name: str, rps: float, p50_ms: float, cpu: float, reads: float | None) -> Point:
    return Point(name, 1, rps, p50_ms, p50_ms * 2, 0, int(rps * 3), cpu, 0.6, 0.2, 100.0, 0, 0,
                 redis_reads_per_req=reads)  # fmt: skip


def test_the_tool_reports_medians_and_paired_differences() -> None:
    points = {
        "a c=1": [_p("a", 10_000, 0.09, 70, None)] * 3,
        "off c=1": [_p("off", 950, 1.03, 720, 2.02), _p("off", 930, 1.05, 730, 2.02),
                    _p("off", 960, 1.02, 710, 2.01)],
        "on c=1": [_p("on", 1_015, 0.96, 680, 1.03), _p("on", 1_000, 0.97, 690, 1.03),
                   _p("on", 1_020, 0.96, 675, 1.02)],
    }  # fmt: skip
    lines = report(points, (1,))
    assert "| reserve_ahead = 0 | 1 | 950 | 1.030 | +0.940 | 720 | 2.02 |" in lines
    assert "| reserve_ahead = 32 | 1 | 1,015 | 0.960 | +0.870 | 680 | 1.03 |" in lines
    assert lines[-1] == (
        "* c=1, reserved ahead against not: p50 -0.070 ms, req/s +6.8%, broker CPU -40 µs/req "
        "(medians of 3 paired rounds; p50 differences -0.070, -0.080, -0.060)."
    )
