"""Smoke test of ``psn bench serving --quick``: real servers (psn serve and the echo app) on 127.0.0.1, wrk,
WebSocket client processes, the fixed-rate stream of every kind; checks the JSON and the plots it writes
and that every server it started is gone. Skipped when wrk is not installed (apt-get install -y wrk)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures import exported_models

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.bench,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)"),
]


def _children() -> set[int]:
    """Live child processes of this process (pids), from /proc, but multiprocessing's resource tracker."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] != me or fields[0] == "Z":  # ppid, state
            continue
        cmdline = (stat.parent / "cmdline").read_bytes()
        if b"resource_tracker" not in cmdline:  # multiprocessing's tracker lives as long as this process
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_writes_numbers_and_plots(tmp_path: Path) -> None:
    from bench.serving.suite import main

    models = exported_models()  # tiny models of every kind (T=8, F=5)
    before = _children()
    assert main(["--quick", "--quiet", "--models-dir", str(models), "--out", str(tmp_path)]) == 0

    doc = json.loads((tmp_path / "bench-serving-quick.json").read_text())
    assert doc["quick"] is True
    assert "pinned" in doc["environment"]["pinning"] or "not pinned" in doc["environment"]["pinning"]

    classify = doc["classify"]["rows"]
    assert {(r["target"], r["format"], r["connections"]) for r in classify} == {
        (t, f, c) for t in ("service", "echo", "fastapi-echo") for f in ("json", "v2-binary") for c in (1, 32)
    }
    for r in classify:
        assert r["errors"] == 0, r
        assert r["requests"] > 0 and r["rps"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]

    streams = doc["streaming"]["rows"]
    assert {(r["target"], r["batching"], r["streams"]) for r in streams} == {
        (t, b, n)
        for t, b in (("service", "on"), ("service", "off"), ("echo", "-"), ("fastapi-echo", "-"))
        for n in (1, 64)
    }
    for r in streams:
        assert r["errors"] == 0, r
        assert r["steps"] > 0 and r["steps_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["client_cpu_util"] > 0
        assert r["server_cpu_util"] is not None and r["server_cpu_util"] >= 0  # clock ticks: 10 ms
    off = [r for r in streams if r["batching"] == "off"]
    assert all(r["mean_batch"] == 1.0 for r in off), off  # batching off: one step per ORT call

    kinds = {k["kind"]: k for k in doc["first_output"]["kinds"]}
    assert set(kinds) == {"psn", "masked_psn", "sliding_psn", "lif"}
    T = kinds["psn"]["T"]
    assert kinds["psn"]["first_output_step"] == T - 1  # a PSN answers only once it holds all T steps
    for kind in ("masked_psn", "sliding_psn", "lif"):
        assert kinds[kind]["first_output_step"] == 0  # the others answer from the first step on

    # the raw ORT cost, measured in the same run, and the limit it sets with the echo's rate
    raw = {m["kind"]: m for m in doc["raw"]["models"]}
    stream_kind = doc["streaming"]["kind"]
    assert raw[doc["classify"]["kind"]]["full_b1_us"] > 0
    step = raw[stream_kind]
    assert step["step_b1_us"] > 0
    assert step["step_b64_per_step_us"] == pytest.approx(step["step_b64_us"] / 64, abs=1e-3)
    limits = {r["figure"]: r for r in doc["limit"]}
    assert set(limits) == {
        "classify, 32 conns, batch 1, JSON",
        "classify, 32 conns, batch 1, V2 binary",
        "64 streams, binary frames",
        "one stream, step round trip p50, binary frames",
    }
    json32 = limits["classify, 32 conns, batch 1, JSON"]
    echo32 = next(r for r in classify if (r["target"], r["format"], r["connections"]) == ("echo", "json", 32))
    expected = 1 / (1 / echo32["rps"] + raw[doc["classify"]["kind"]]["full_b1_us"] / 1e6)
    assert json32["limit"] == pytest.approx(expected, rel=1e-3) and json32["limit"] < json32["echo"]
    assert json32["fraction"] == pytest.approx(json32["service"] / json32["limit"], rel=1e-3)
    rtt = limits["one stream, step round trip p50, binary frames"]
    assert rtt["limit"] == pytest.approx(rtt["echo"] + raw[stream_kind]["step_b1_us"] / 1e3, abs=2e-4)
    goals = {g["goal"]: g for g in doc["goals"]}
    assert set(limits) <= set(goals)
    assert goals["classify, 32 conns, batch 1, JSON"]["met"] == (json32["fraction"] >= 0.7)
    # the open-loop sweep: every request sent was answered or counted lost, latencies from the due time
    sweep = doc["sweep"]
    assert {(r["workload"], r["level"]) for r in sweep["rows"]} == {("classify", 0.5), ("streams", 0.5)}
    assert sweep["saturation"]["classify"] == pytest.approx(json32["service"], rel=1e-3)
    for r in sweep["rows"]:
        assert r["offered_per_s"] == pytest.approx(0.5 * sweep["saturation"][r["workload"]])
        assert r["sent"] == int(r["offered_per_s"] * 0.5) and 0 < r["answered"] <= r["sent"], r
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        assert r["client_cpu_util"] > 0
    for name in ("limit", "classify", "streams", "latency", "sweep"):
        png = tmp_path / f"bench-serving-quick-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert _children() - before == set(), "a server or client process outlived the run"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_workers_part_measures_one_and_two_processes(tmp_path: Path) -> None:
    """``--workers 1,2``: psn serve with 1 then 2 processes, classify req/s and 64 streams' steps/s each."""
    from bench.models import scan
    from bench.serving.procs import choose_pinning
    from bench.serving.runs import Context, run_workers_part, workers_table
    from bench.serving.suite import QUICK

    models = exported_models()
    ctx = Context(QUICK, choose_pinning(), tmp_path, scan(models), True, None, None, None)
    before = _children()
    part = run_workers_part((1, 2), models, ctx, True, ["CPUExecutionProvider"])
    rows = {r["workers"]: r for r in part["rows"]}
    assert set(rows) == {1, 2}
    for r in rows.values():
        assert r["classify_rps"] > 0 and r["classify_errors"] == 0, r
        assert r["steps_per_s"] > 0 and r["steps_errors"] == 0, r
    assert rows[1]["classify_vs_1"] == 1.0 and rows[1]["steps_vs_1"] == 1.0
    assert rows[2]["classify_vs_1"] == pytest.approx(rows[2]["classify_rps"] / rows[1]["classify_rps"])
    table = workers_table(part).splitlines()  # title, header, rule, one row per worker count
    assert len(table) == 5 and [line.split()[0] for line in table[3:]] == ["1", "2"], table
    assert _children() - before == set(), "a server or client process outlived the run"
