"""The checks and the plot of the rollout scenario (tests/cluster/run_rollout.py): what its result must show,
and docs/cluster-test-rollout.png."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tests.cluster.cluster import replica_at

if TYPE_CHECKING:
    from tests.cluster.run_rollout import StreamRun


def _compare(run: StreamRun) -> str | None:
    """Why the stream's answers are not the expected ones (None when they are)."""
    if run.error:
        return run.error[:600]
    if not run.answers or len(run.answers) != len(run.expected):
        return f"{len(run.answers)} answers, {len(run.expected)} expected"
    for (t, label, probs), (et, elabel, eprobs) in zip(run.answers, run.expected, strict=True):
        diff = float(np.abs(np.asarray(probs, np.float64) - eprobs).max())
        if t != et or label != elabel or diff > 1e-6:
            return f"step {et}: {label} vs {elabel}, |dp| {diff:.2e}"
    return None


def check(result: dict, replicas: int) -> dict[str, dict]:
    before, after, classify, want = result["before"], result["after"], result["classify"], result["want"]
    events = result["events"]
    checks: dict[str, dict] = {}
    for phase, runs, version in (("before", before, "1"), ("after", after, "2")):
        bad = [f"stream {r.index} ({r.model}): {why}" for r in runs if (why := _compare(r)) is not None]
        wrong = [f"stream {r.index}: versions {r.versions}" for r in runs if set(r.versions) != {version}]
        checks[f"streams_{phase}_the_roll_on_version_{version}"] = {
            "ok": not bad and not wrong and len(runs) > 0,
            "streams": len(runs),
            "steps": sum(len(r.answers) for r in runs),
            "bad": bad[:10],
            "wrong_version": wrong[:10],
        }
    roll = (events.get("roll_started", 0.0), events.get("roll_done", 0.0))
    moved = [r for r in before if len(r.connections) > 1]
    onto_updated = [
        r for r in moved if any(t > events["ready"].get(rep, float("inf")) for t, rep in r.connections[1:])
    ]
    checks["streams_resumed_across_the_roll"] = {
        "ok": len(moved) > 0 and len(onto_updated) > 0,
        "moved": len(moved),
        "resumed_on_an_updated_replica": len(onto_updated),
    }
    failed = []
    by_version = {"1": 0, "2": 0}
    for c in classify:
        version = c.get("version")
        if c.get("status") != 200 or version not in want:
            failed.append(c)
            continue
        expected = want[version][c["k"]]
        diff = float(np.abs(np.asarray(c["probabilities"]) - expected.probabilities[0]).max())
        if c["label"] != expected.labels[0] or diff > 1e-6:
            failed.append({**c, "expected": expected.labels[0], "diff": diff})
            continue
        by_version[version] += 1
    during = {c.get("version") for c in classify if roll[0] <= c["t"] <= roll[1] and c.get("status") == 200}
    checks["classify_no_failures"] = {
        "ok": not failed and by_version["1"] > 0 and by_version["2"] > 0 and during == {"1", "2"},
        "requests": len(classify),
        "by_version": by_version,
        "versions_during_the_roll": sorted(v for v in during if v),
        "failed": [{k: v for k, v in c.items() if k != "probabilities"} for c in failed[:10]],
    }
    restarted = events["indexes"]
    served_both = all(
        any(e.endswith("/1 READY") for e in restarted.get(f"{i} restarted", []))
        and any(e.endswith("/2 READY") for e in restarted.get(f"{i} restarted", []))
        for i in range(replicas)
    )
    checks["replicas_restarted_with_both_versions"] = {
        "ok": served_both and sorted(events["ready"]) == list(range(replicas)),
        "restarted_at": events["restarted"],
        "ready_at": events["ready"],
    }
    gone = events.get("version_1_gone", {})
    end = events["indexes"].get("end", {})
    checks["version_1_unloaded_after_removal"] = {
        "ok": len(gone) == replicas
        and all(all(e.endswith(" READY") and "/2 " in e for e in entries) for entries in end.values()),
        "removed_at": events.get("version_1_removed"),
        "gone_at": gone,
        "index_at_end": end,
    }
    return checks


def plot(result: dict, replicas: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events, end = result["events"], result["duration"]
    runs = result["before"] + result["after"]
    grid = np.arange(0.0, end, 0.1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)

    for replica in range(replicas):
        for phase, style in (("before", "-"), ("after", "--")):
            counts = [
                sum(
                    1
                    for r in runs
                    if r.phase == phase
                    and r.opened <= t < r.finished
                    and replica_at(r.connections, t) == replica
                )
                for t in grid
            ]
            version = "1" if phase == "before" else "2"
            top.plot(grid, counts, style, label=f"replica {replica}, version {version} streams")
    top.set_ylabel("open streams")
    top.set_title(
        f"Rolling update 1 -> 2: {len(result['before'])} streams before, {len(result['after'])} after"
    )
    bins = np.arange(0.0, end + 0.5, 0.5)
    for version, color in (("1", "tab:blue"), ("2", "tab:orange")):
        times = [c["t"] for c in result["classify"] if c.get("version") == version]
        counts, _ = np.histogram(times, bins)
        bottom.plot(
            bins[:-1] + 0.25, counts / 0.5, color=color, label=f"classify answered by version {version}"
        )
    bottom.set_ylabel("classify answers / s")
    bottom.set_xlabel("seconds since the load started")
    for ax in (top, bottom):
        for i, at in events["restarted"].items():
            ax.axvline(at, color="red", linestyle=":", linewidth=1)
            ax.text(at, ax.get_ylim()[1], f" SIGTERM {i}", color="red", va="top", fontsize=7)
        for at in events["ready"].values():
            ax.axvline(at, color="green", linestyle=":", linewidth=1)
        if "version_1_removed" in events:
            ax.axvline(events["version_1_removed"], color="purple", linestyle="--", linewidth=1)
            ax.text(
                events["version_1_removed"],
                ax.get_ylim()[1],
                " v1 removed",
                color="purple",
                va="top",
                fontsize=7,
            )
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
