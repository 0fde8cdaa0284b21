"""Where the server's time goes: py-spy samples the server process during one load run (``--profile DIR``);
the collapsed stacks and a flame graph are written to DIR, and the busiest functions are summarized.

py-spy is optional (``pip install py-spy``); it needs ptrace rights on the server (root, or
``kernel.yama.ptrace_scope=0``). Profiled runs are extra runs: their numbers are not the reported ones.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.serving.procs import Pinning

RATE_HZ = 250
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    name: str
    samples: int
    self_pct: list[tuple[str, float]]  # (function (file), % of samples where it is the innermost frame)
    total_pct: list[tuple[str, float]]  # (function (file), % of samples where it is on the stack)
    raw_path: str
    svg_path: str | None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "samples": self.samples,
            "self_pct": [[f, round(p, 2)] for f, p in self.self_pct],
            "total_pct": [[f, round(p, 2)] for f, p in self.total_pct],
            "raw": self.raw_path,
            "svg": self.svg_path,
        }


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

    def finish(self, timeout_s: float = 60.0) -> Profile:
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
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def summarize(name: str, raw: Path, top: int = 15) -> Profile:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        count = int(m.group(2))
        frames = [_frame_name(f) for f in m.group(1).split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            total_counts[f] += count
    pct = lambda c: 100.0 * c / max(1, samples)  # noqa: E731
    svg = _flamegraph(raw)
    return Profile(
        name,
        samples,
        [(f, pct(c)) for f, c in self_counts.most_common(top)],
        [(f, pct(c)) for f, c in total_counts.most_common(top * 2)],
        str(raw),
        svg,
    )


def _flamegraph(raw: Path) -> str | None:
    """An SVG from the collapsed stacks when flamegraph.pl or inferno is around; else None."""
    tool = shutil.which("inferno-flamegraph") or shutil.which("flamegraph.pl")
    if tool is None:
        return None
    svg = raw.with_suffix(".svg")
    with raw.open("rb") as src, svg.open("wb") as dst:
        done = subprocess.run([tool], stdin=src, stdout=dst, timeout=60, check=False)
    return str(svg) if done.returncode == 0 else None
