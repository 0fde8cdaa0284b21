"""Garbage-collection pauses of psn serve: ``python -m bench.serving.gctrace FILE -- PYTHON -m psn.cli serve
...`` runs the server in this process with a ``gc.callbacks`` hook and keeps FILE up to date with the totals
per generation (count, summed and largest pause in ms); two reads apart are what a load point cost."""

from __future__ import annotations

import gc
import json
import runpy
import sys
import time
from pathlib import Path

from server.listen import write_atomically

WRITE_EVERY_S = 0.2


def install(path: Path) -> None:
    totals = {g: {"count": 0, "sum_ms": 0.0, "max_ms": 0.0} for g in range(3)}
    state = {"t0": 0.0, "written": 0.0}

    def write() -> None:  # atomically: the suite reads it while the server runs
        write_atomically(path, json.dumps({"generations": totals}))

    def hook(phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            state["t0"] = now
            return
        t = totals[info["generation"]]
        pause = (now - state["t0"]) * 1e3
        t["count"], t["sum_ms"], t["max_ms"] = t["count"] + 1, t["sum_ms"] + pause, max(t["max_ms"], pause)
        if info["generation"] == 2 or now - state["written"] > WRITE_EVERY_S:
            state["written"] = now
            write()

    write()
    gc.callbacks.append(hook)


def read(path: Path) -> dict:
    """{generation: {"count", "sum_ms", "max_ms"}} so far (the max is over the whole run so far)."""
    return {int(g): v for g, v in json.loads(path.read_text())["generations"].items()}


def delta(before: dict, after: dict) -> dict:
    return {
        f"gen{g}": {
            "count": after[g]["count"] - before[g]["count"],
            "sum_ms": after[g]["sum_ms"] - before[g]["sum_ms"],
            "max_ms_so_far": after[g]["max_ms"],
        }
        for g in after
    }


def main() -> None:
    path, command = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1 :]
    if command[1:3] != ["-m", "psn.cli"]:
        raise SystemExit(f"gctrace: expected PYTHON -m psn.cli ..., got {command[:3]}")
    install(path)
    sys.argv = ["psn", *command[3:]]
    runpy.run_module("psn.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
