"""``--profile DIR``: py-spy samples the server during extra load runs (ptrace rights needed); collapsed
stacks (and a flame graph when inferno or flamegraph.pl is around) go to DIR, the busiest functions to the
report."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.models import REPO_ROOT
from bench.serving.procs import Pinning

RATE_HZ = 250
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recorder:
    """``py-spy record`` on a pid for a fixed time, started before a load run and awaited after it."""

    def __init__(self, pid: int, seconds: float, out_dir: Path, name: str, pinning: Pinning) -> None:
        exe = py_spy_binary()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.raw = out_dir / f"{name}.txt"
        cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(RATE_HZ),
        ]
        cmd += ["--nonblocking", "--format", "raw", "-o", str(self.raw)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=pinning.load_setup()
        )

    def finish(self, timeout_s: float = 60.0) -> dict:
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0 or not self.raw.exists():
            raise RuntimeError(f"py-spy failed ({self.proc.returncode}): {err.strip()[-400:]}")
        return summarize(self.name, self.raw)


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", f"{REPO_ROOT}/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def summarize(name: str, raw: Path, top: int = 15) -> dict:
    """{name, samples, self_pct / total_pct: [[function (file), % of samples innermost / on the stack]],
    raw, svg} from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        if (m := _LINE.match(line)) is None:
            continue
        frames = [_frame_name(f) for f in m.group(1).split(";") if f]
        if not (frames := [f for f in frames if not f.startswith(("process ", "thread "))]):
            continue
        count = int(m.group(2))
        samples += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            total_counts[f] += count

    def pct(counts: Counter[str], n: int) -> list:
        return [[f, round(100.0 * c / max(1, samples), 2)] for f, c in counts.most_common(n)]

    svg = raw.with_suffix(".svg")
    tool = shutil.which("inferno-flamegraph") or shutil.which("flamegraph.pl")
    if tool is not None:  # an SVG from the collapsed stacks when a flame graph tool is around
        with raw.open("rb") as src, svg.open("wb") as dst:
            tool = tool if subprocess.run([tool], stdin=src, stdout=dst, timeout=60).returncode == 0 else None
    svg_path = None if tool is None else str(svg)
    top_pct = {"self_pct": pct(self_counts, top), "total_pct": pct(total_counts, 2 * top)}
    return {"name": name, "samples": samples, **top_pct, "raw": str(raw), "svg": svg_path}
