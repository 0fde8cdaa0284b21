"""Where the open-loop classify tail comes from: psn serve beside the raw echo and the echo plus a constant
busy-wait per request (a server of the same CPU cost whose service time does not vary), each on the pinned
server core, at the same constant offered rates, interleaved over rounds (docs/benchmarks.md, tail latency).

``python -m bench.serving.tailcheck --rates 282,563,845 --seconds 10 --rounds 2 --busy-us 850``"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from bench.common import table
from bench.serving.echo_app import BUSY_US_ENV
from bench.serving.openloop import run_http
from bench.serving.procs import HOST, choose_pinning, echo_server, psn_server
from bench.serving.wrk import classify_body

MODEL = "smnist-psn"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.serving.tailcheck", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rates", default="282,563,845", help="offered requests/s, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per point")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--busy-us", type=float, default=850.0, help="the busy echo's CPU per request (µs)")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    pinning, body, rows = choose_pinning(), classify_body(28, 28, 1), []
    os.environ[BUSY_US_ENV] = str(args.busy_us)  # inherited by the busy echo
    with tempfile.TemporaryDirectory(prefix="psn-tailcheck-") as tmp, contextlib.ExitStack() as stack:
        logs, start = Path(tmp), stack.enter_context  # every server started is stopped on the way out
        psn = start(psn_server(args.models_dir, batching=True, log_dir=logs, pinning=pinning))
        servers = {
            "echo": (start(echo_server(logs, pinning)), "/echo"),
            f"echo + {args.busy_us:g} us busy": (start(echo_server(logs, pinning, "busy")), "/echo"),
            "psn serve": (psn, f"/v1/models/{MODEL}/classify"),
        }
        for round_ in range(args.rounds):
            for rate in rates:
                for name, (server, path) in servers.items():
                    url = f"http://{HOST}:{server.port}{path}"
                    r = run_http(url, body, rate, args.seconds, pinning, server)
                    rows.append(
                        {"round": round_, "rate": rate, "server": name, **r.latency_ms}
                        | {"ratio": r.latency_ms["p99"] / r.latency_ms["p50"], "conns": r.connections}
                        | {"srv": r.server_cpu_util, "lag": r.send_lag_ms["p99"], "errors": r.errors}
                    )
                    print(table(rows[-1:], COLUMNS), file=sys.stderr)
    print(table(rows, COLUMNS, f"open-loop classify, {pinning.note}"))
    return 0


COLUMNS = (
    "round | offered/s=rate:.0f | server | p50 ms=p50:.2f | p99 ms=p99:.2f | p99.9 ms=p999:.2f"
    " | max ms=max:.1f | p99/p50=ratio:.1f | conns | srv cpu=srv:.2f | gen lag p99 ms=lag:.2f | errors"
)

if __name__ == "__main__":
    raise SystemExit(main())
