#!/usr/bin/env bash
# How long `make serve` takes on a fresh clone, from nothing to its "ready:" line (venv, install, model load).
#   bash docs/serve-ready-time.sh [REPO] [PORT]   (REPO defaults to this checkout; PORT to 8790)
# (the gRPC port is any free one unless PSN_GRPC_PORT says otherwise.)
# Prints one line: seconds, commit, CPU, cores, load average at the start, onnxruntime build. Stops the server.
set -euo pipefail
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
port=${2:-8790}
work=$(mktemp -d)
trap 'kill -- -"${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
commit=$(git -C "$work/clone" rev-parse --short HEAD)
load=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s.%N)
(cd "$work/clone" && PSN_GRPC_PORT=${PSN_GRPC_PORT:-0} exec setsid make serve PORT="$port" >"$work/serve.log" 2>&1) &
pid=$!
until grep -q "psn.server: ready:" "$work/serve.log" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/serve.log" >&2; echo "make serve exited" >&2; exit 1; fi
  if (( $(date +%s) - ${start%.*} > 600 )); then echo "not ready in 600 s" >&2; exit 1; fi
  sleep 0.2
done
end=$(date +%s.%N)
ort=$(grep -o "onnxruntime: [a-z]* build" "$work/serve.log" | head -1 || true)
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
printf '%.1f s to ready: commit %s, %s, %s cores, load average %s at the start, %s\n' \
  "$(echo "$end - $start" | bc)" "$commit" "$cpu" "$(nproc)" "$load" "${ort:-onnxruntime as installed}"
