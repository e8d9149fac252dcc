"""``benchmarks.run --repeat N``: alternated rounds, the median round's point, the spread shown."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks import report, verdict
from benchmarks.repeat import (
    ONCE,
    combine,
    median_index,
    median_records,
    per_round,
    schedule,
    spread,
)
from benchmarks.report_chain import _index, verdict_lines
from benchmarks.report_openloop import _verdict
from benchmarks.run import RECORDS, Run, _parse_args


def test_one_round_is_the_chosen_scenarios_in_order() -> None:
    assert schedule(["a", "b1", "e"], 1) == [(1, "a"), (1, "b1"), (1, "e")]


def test_rounds_alternate_every_scenario_so_baselines_and_broker_interleave() -> None:
    assert schedule(["b1", "c", "e"], 3) == [
        (1, "b1"), (1, "c"), (1, "e"),
        (2, "b1"), (2, "c"), (2, "e"),
        (3, "b1"), (3, "c"), (3, "e"),
    ]  # fmt: skip


def test_scenarios_with_their_own_aggregates_are_measured_in_round_one_only() -> None:
    assert {"h", "k"} <= ONCE
    assert schedule(["b1", "h", "e", "p"], 2) == [
        (1, "b1"), (1, "h"), (1, "e"), (1, "p"), (2, "b1"), (2, "e"), (2, "p"),
    ]  # fmt: skip


def _open_loop(store: str, p99: float, rnd: int) -> dict[str, Any]:
    return {"scenario": f"p-{store}", "store": store, "rate": 1_000 + rnd, "p99_ms": p99,
            "broker": {"p99_ms": p99}, "p99_target_ms": 15.0, "round": rnd}  # fmt: skip


def test_the_open_loop_keeps_per_store_the_round_with_the_median_p99() -> None:
    records = [
        _open_loop(store, p99, n)
        for n, by_store in enumerate(({"redis": 32.9, "memory": 18.7},
                                      {"redis": 9.1, "memory": 9.9},
                                      {"redis": 10.2, "memory": 8.8}), start=1)
        for store, p99 in by_store.items()
    ]  # fmt: skip
    results = {"points": [], "openloop": [{k: v for k, v in r.items() if k != "round"}
                                          for r in records]}  # fmt: skip
    combined = combine(results, {"openloop": [r["round"] for r in records]}, 3, ["p"])
    redis, memory = combined["openloop"]
    # A slow first round (a host phase) no longer decides the reading: round 3 and round 2.
    assert (redis["store"], redis["round"], redis["broker"]["p99_ms"]) == ("redis", 3, 10.2)
    assert (memory["store"], memory["round"], memory["rate"]) == ("memory", 2, 1_002)
    assert [r["p99_ms"] for r in redis["rounds"]] == [32.9, 9.1, 10.2]
    assert combined["repeat"]["once"] == []
    row = verdict._open_loop_rows(combined)[0]
    assert "| 10.2 ms (9.1-32.9 ms over 3 rounds) | met |" in row
    assert "met (4.8 ms to spare) (9.1-32.9 ms over 3 rounds)" in _verdict(redis)


@pytest.mark.parametrize(
    ("values", "index"),
    [
        ([5.0], 0),
        ([3.0, 1.0, 2.0], 2),  # the middle value, wherever it sits
        ([10.0, 30.0, 20.0, 40.0], 2),  # even count: the lower of the two middle ones
        ([1.0, 2.0], 0),
        ([7.0, 7.0, 7.0], 1),  # equal values ranked in round order
        ([7.0, 5.0, 7.0], 0),
    ],
)
def test_the_median_is_one_of_the_values(values: list[float], index: int) -> None:
    assert median_index(values) == index


def test_no_values_have_no_median() -> None:
    with pytest.raises(ValueError, match="no values"):
        median_index([])


def _point(scenario: str, c: int, rps: float, rnd: int, **kw: Any) -> dict[str, Any]:
    return {"scenario": scenario, "concurrency": c, "rps": rps, "round": rnd,
            "cpu_us_per_req": 1e6 / rps, "p50_ms": rnd / 10, "p99_ms": rnd, **kw}  # fmt: skip


def test_the_median_point_is_a_measured_one_with_every_round_beside_it() -> None:
    points = [_point("e", 16, rps, n) for n, rps in ((1, 3_000), (2, 3_300), (3, 3_100))]
    (picked,) = median_records(points, lambda p: p["scenario"], "rps", ("rps", "p50_ms"))
    # Round 3's point, whole: its latency is round 3's, not an average of columns.
    assert (picked["rps"], picked["p50_ms"], picked["round"]) == (3_100, 0.3, 3)
    assert picked["rounds"] == [
        {"round": 1, "rps": 3_000, "p50_ms": 0.1},
        {"round": 2, "rps": 3_300, "p50_ms": 0.2},
        {"round": 3, "rps": 3_100, "p50_ms": 0.3},
    ]


def _rounds_of(*lists: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[int]]]:
    points = [p for group in lists for p in group]
    results = {"points": points, "stream_points": [], "probes": [], "redis_probes": [],
               "launches": [], "chain_points": [], "openloop": []}  # fmt: skip
    return results, {"points": [p.pop("round") for p in points]}


def test_combine_keeps_one_point_per_scenario_and_c_in_first_seen_order() -> None:
    rounds = [[_point(s, c, rps * n, n) for s, rps in (("b1", 7_000), ("e", 3_000))
               for c in (1, 16)] for n in (1, 2, 3)]  # fmt: skip
    results, numbers = _rounds_of(*rounds)
    combined = combine(results, numbers, 3, ["b1", "e", "h"])
    keys = [(p["scenario"], p["concurrency"]) for p in combined["points"]]
    assert keys == [("b1", 1), ("b1", 16), ("e", 1), ("e", 16)]
    assert all(p["round"] == 2 for p in combined["points"])
    assert combined["repeat"] == {"rounds": 3, "once": ["h"]}


def test_a_system_unavailable_in_one_round_but_measured_in_another_keeps_its_measured_rows() -> (
    None
):
    gone = _point("i-litellm", 0, 0.0001, 1, unavailable="did not start")
    results, numbers = _rounds_of([gone], [_point("i-litellm", 1, 100, 2)])
    combined = combine(results, numbers, 2, ["i"])
    assert [p["concurrency"] for p in combined["points"]] == [1]


def test_combine_refuses_round_numbers_that_do_not_match_the_records() -> None:
    results, _ = _rounds_of([_point("e", 1, 1_000, 1)])
    with pytest.raises(ValueError, match="1 records but 0 round numbers"):
        combine(results, {"points": []}, 2, ["e"])


def test_counts_and_set_ups_are_kept_from_the_first_round() -> None:
    probes = [{"scenario": "e", "network_per_req": n, "round": n} for n in (2, 1)]
    results = {"points": [], "redis_probes": [{k: v for k, v in p.items() if k != "round"}
                                               for p in probes]}  # fmt: skip
    combined = combine(results, {"redis_probes": [2, 1]}, 2, ["e"])
    assert combined["redis_probes"] == [{"scenario": "e", "network_per_req": 1, "round": 1}]


def test_a_run_notes_the_round_of_every_record_its_scenarios_append(tmp_path: Path) -> None:
    env = SimpleNamespace(placement=SimpleNamespace(rest=None), children=[])
    run = Run(env, 1.0, tmp_path, SimpleNamespace(max_wait=0.0, patience=0.0))  # type: ignore[arg-type]
    measured = {"b1": 3, "e": 3, "p": 0}
    for number, name in schedule(["b1", "e", "p"], 2):
        with run.round(number):
            run.chain_points += [{"scenario": name}] * measured[name]
            if name == "p":
                run.openloop.append({"store": "redis"})
    assert run.rounds["chain_points"] == [1] * 6 + [2] * 6
    assert run.rounds["openloop"] == [1, 2]  # (p) is taken every round (decision 0108)
    assert set(run.rounds) == set(RECORDS)


def test_repeat_is_one_unless_asked_and_never_below_one() -> None:
    assert _parse_args([]).repeat == 1
    assert _parse_args(["--repeat", "3"]).repeat == 3
    with pytest.raises(SystemExit):
        _parse_args(["--repeat", "0"])


# -- what the report shows -------------------------------------------------------------------


def test_a_spread_needs_two_rounds_and_signed_figures_are_joined_with_to() -> None:
    assert spread([0.47], str) == ""
    assert spread([45.0, 49.0, 47.0], "{:.0f}".format, "%") == " (45-49% over 3 rounds)"
    assert spread([-0.4, 0.04], "{:+.2f}".format, " ms") == " (-0.40 to +0.04 ms over 2 rounds)"


def test_ratios_are_paired_round_by_round() -> None:
    e = {"rounds": [{"round": 1, "rps": 45}, {"round": 2, "rps": 49}, {"round": 3, "rps": 47}]}
    b1 = {"rounds": [{"round": 1, "rps": 100}, {"round": 2, "rps": 100}, {"round": 3, "rps": 0}]}
    # Round 3's baseline answered nothing: that round has no ratio, the others do.
    assert per_round([e, b1], lambda p, b: p["rps"] / b["rps"]) == [0.45, 0.49]
    assert per_round([e, {"rps": 100}], lambda p, b: p["rps"] / b["rps"]) == []


def _full(scenario: str, c: int, rps: list[float], p50: list[float]) -> dict[str, Any]:
    rounds = [{"round": n, "rps": r, "cpu_us_per_req": 1e6 / r, "p50_ms": p, "p99_ms": 2 * p}
              for n, (r, p) in enumerate(zip(rps, p50, strict=True), 1)]  # fmt: skip
    mid = rounds[median_index(rps)]
    return {"scenario": scenario, "concurrency": c, "errors": 0, "foreign_cores": 0.0,
            **mid, "rounds": rounds}  # fmt: skip


def _results(repeat: int | None) -> dict[str, Any]:
    points = [
        _full("a", 1, [20_000, 20_000, 20_000], [0.10, 0.10, 0.10]),
        _full("e", 1, [1_000, 1_100, 1_050], [0.60, 0.70, 0.65]),
        _full("b1", 16, [7_000, 7_000, 7_000], [1.0, 1.0, 1.0]),
        _full("e", 16, [3_150, 3_430, 3_290], [3.0, 3.0, 3.0]),
    ]
    if repeat is None:  # a run of one round: no spreads anywhere
        points = [{k: v for k, v in p.items() if k != "rounds"} for p in points]
    return {"points": points, **({"repeat": {"rounds": repeat, "once": []}} if repeat else {})}


def test_the_targets_table_shows_each_target_with_its_spread_over_the_rounds() -> None:
    table = "\n".join(verdict.targets(_results(3)))
    assert "| 47% (45-49% over 3 rounds) | **not met** |" in table
    assert "+0.55 ms (+0.50 to +0.60 ms over 3 rounds)" in table
    assert "304 µs (292-317 µs over 3 rounds)" in table


def test_one_round_reads_as_before() -> None:
    table = "\n".join(verdict.targets(_results(None)))
    assert "| 47% | **not met** |" in table
    assert "rounds" not in table
    assert report.repeat_line(_results(None)) == []


@pytest.mark.parametrize(
    ("b1_rps", "reading"),
    [
        (7_000, "tighter budget than the target's own on this faster machine"),  # 143 µs
        (3_000, "fairer reading of the CPU target on this slower machine"),  # 333 µs
    ],
)
def test_the_scaled_cpu_row_says_which_way_it_moves_the_budget(b1_rps: int, reading: str) -> None:
    results = _results(3)
    (b16,) = [p for p in results["points"] if p["scenario"] == "b1"]
    b16["cpu_us_per_req"] = 1e6 / b1_rps  # against the 224 µs the budget was set at
    assert reading in "\n".join(verdict.targets(results))


def test_the_header_states_the_rounds_and_the_rule() -> None:
    (line,) = report.repeat_line({"repeat": {"rounds": 3, "once": ["h", "p"]}})
    assert "`--repeat 3`" in line
    assert "median of 3 alternated rounds" in line
    assert "Measured once even so: h, p" in line
    (even,) = report.repeat_line({"repeat": {"rounds": 2, "once": []}})
    assert "the lower of the two middle rounds" in even


def test_the_per_hop_target_shows_each_rounds_own_growth() -> None:
    # CPU per request at depths 1-5, per round: the 5th hop adds 1,000 µs, the 2nd 1,000 in
    # round 1 (+0%) and 800 in round 2 (+25%).
    cpu = {1: (1_000, 1_000), 2: (2_000, 1_800), 3: (3_000, 3_000), 4: (4_000, 4_000),
           5: (5_000, 5_000)}  # fmt: skip
    points = []
    for depth, (r1, r2) in cpu.items():
        rounds = [{"round": 1, "rps": 100, "cpu_us_per_req": r1},
                  {"round": 2, "rps": 90, "cpu_us_per_req": r2}]  # fmt: skip
        points.append({"scenario": f"g-broker-d{depth}", "mode": "broker", "depth": depth,
                       "concurrency": 16, "requests": 1_000, "foreign_cores": 0.0,
                       **rounds[1], "rounds": rounds})  # fmt: skip
    rows = "\n".join(verdict._chain_rows({"chain_points": points}))
    assert "(+25%) (+0 to +25% each round alone, 2 rounds)" in rows
    section = "\n".join(verdict_lines(_index(points), points))
    assert "+25% (+0 to +25% each round alone, 2 rounds) (target within ±15%)" in section


def test_the_llm_ratio_shows_its_spread_round_by_round() -> None:
    def llm(scenario: str, rps: list[float]) -> dict[str, Any]:
        return {**_full(scenario, 1, rps, [1.0] * len(rps)), "p99_ms": 1.0 if "broker" in
                scenario else 9.0}  # fmt: skip

    points = [llm("i-broker", [2_000, 2_000, 2_000]), llm("i-litellm", [85, 153, 100])]
    (row,) = verdict._llm_rows({"points": points})
    # LiteLLM's median round (100 req/s) decides; each round's own ratio is in brackets.
    assert "20.0x (13.1-23.5x) (c=1; in brackets the lowest-highest of 3 rounds)" in row
    assert "| met |" in row


def test_the_load_line_states_the_load_and_why_rows_were_kept_without_judging_it() -> None:
    results = {"loadavg": [0.15, 1.44], "machine": {"nproc": 2},
               "command": "python -m benchmarks.run --scenarios a,e --merge"}  # fmt: skip
    (line,) = report._load_line(results)
    assert "load average 0.15 when the run started, 1.44 when it ended, on 2 CPUs" in line
    assert "this run measured the scenarios it names" in line
    assert "busy" not in line  # a quiet run is not called busy
    (whole,) = report._load_line({**results, "command": "python -m benchmarks.run"})
    assert "kept from earlier runs" not in whole
