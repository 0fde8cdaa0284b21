#!/usr/bin/env bash
# make gpu-check: on a host with an NVIDIA GPU, check and measure psn-serve on it, in about 10 minutes.
#
#   1. a venv (.venv-gpu, or $PSN_GPU_VENV) with CUDA torch from PyPI and onnxruntime-gpu[cuda,cudnn]
#   2. the export parity checks (tests/test_export_parity.py) with ONNX Runtime on CUDAExecutionProvider
#   3. psn bench neurons --device cuda        (PSN_GPU_CHECK_FULL=1: the full grid, else --quick)
#   4. psn bench runtime  --providers CUDAExecutionProvider CPUExecutionProvider
#   5. psn bench serving  --providers CUDAExecutionProvider,CPUExecutionProvider (classify and streams)
#
# Results go to docs/gpu/<device>/ (or $PSN_GPU_CHECK_OUT/<device>/; the device as nvidia-smi names it,
# lower-case, dashes): each suite's JSON and PNGs, environment.json (device, driver, versions, providers)
# and gpu-check.log. The whole run stops at $PSN_GPU_CHECK_BUDGET_S seconds (600);
# PSN_GPU_CHECK_SKIP_INSTALL=1 reuses the venv as it is. Exit status: 0 all passed, 1 a step failed or
# CUDA is not usable (then nothing is measured), 3 no GPU here (said at once, nothing installed or written).
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${PSN_GPU_CHECK_BUDGET_S:-600}
VENV=${PSN_GPU_VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}
NVIDIA_SMI=${PSN_NVIDIA_SMI:-nvidia-smi}
CUDA_PROVIDERS=(CUDAExecutionProvider CPUExecutionProvider)

if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU on this host ($NVIDIA_SMI not found); nothing checked" >&2
  exit 3
fi
if ! device=$("$NVIDIA_SMI" --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) \
  || [[ -z "$device" ]]; then
  echo "gpu-check: $NVIDIA_SMI finds no GPU (no driver, or no device visible); nothing checked" >&2
  exit 3
fi
driver=$("$NVIDIA_SMI" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
slug=$(printf '%s' "$device" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
out="${PSN_GPU_CHECK_OUT:-docs/gpu}/${slug:-unknown-gpu}"
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
start=$SECONDS
failed=()

say() { echo "gpu-check: $*" | tee -a "$log"; }

# step NAME COMMAND...: run COMMAND within the time left, its output into the log; record a failure
step() {
  local name=$1 left
  shift
  left=$((BUDGET_S - (SECONDS - start)))
  if ((left < 15)); then
    say "$name: skipped, out of time"
    failed+=("$name (no time left)")
    return 0
  fi
  say "$name ($left s left): $*"
  if ! timeout --kill-after=10 "$left" "$@" 2>&1 | tee -a "$log"; then
    say "$name: FAILED"
    failed+=("$name")
  fi
}

say "device: $device (driver $driver); results in $out"
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)
if [[ ${PSN_GPU_CHECK_SKIP_INSTALL:-0} == 1 ]]; then  # a re-run on a venv made by an earlier run
  say "installs skipped (PSN_GPU_CHECK_SKIP_INSTALL=1): using $VENV as it is"
else
  if [[ ! -x "$py" ]]; then
    step "venv" "$PYTHON" -m venv "$VENV"
  fi
  # torch from PyPI: its Linux wheels are the CUDA builds (the same version the CPU venv pins)
  step "install torch (CUDA)" "${pip[@]}" install torch==2.13.0
  step "install psn-serve" "${pip[@]}" install -e ".[train,bench,dev]"
  step "install onnxruntime-gpu[cuda,cudnn]" "${pip[@]}" install "onnxruntime-gpu[cuda,cudnn]"
fi
if ! command -v wrk >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  step "install wrk" apt-get install -y -q wrk
fi

step "CUDA visible to torch and ONNX Runtime" "$py" - "$out/environment.json" "$device" "$driver" <<'EOF'
import json, platform, sys

import onnxruntime as ort
import torch

path, device, driver = sys.argv[1:4]
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()  # the CUDA/cuDNN libraries of the nvidia-* wheels
providers = ort.get_available_providers()
env = {
    "device": device, "driver": driver, "python": platform.python_version(),
    "torch": torch.__version__, "torch_cuda": torch.version.cuda, "torch_sees_cuda": torch.cuda.is_available(),
    "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "onnxruntime": ort.__version__, "ort_providers": providers,
}
json.dump(env, open(path, "w"), indent=2)
print(json.dumps(env, indent=2))
if not torch.cuda.is_available() or "CUDAExecutionProvider" not in providers:
    sys.exit("CUDA is not usable from torch or ONNX Runtime (see above)")
EOF
if ((${#failed[@]})); then  # the suites would fall back to the CPU and measure it under the GPU's name
  say "CUDA is not usable here: no GPU measurement taken (see $log)"
  exit 1
fi

step "export parity on CUDAExecutionProvider" env PSN_PARITY_PROVIDERS="$(IFS=,; echo "${CUDA_PROVIDERS[*]}")" \
  "$VENV/bin/pytest" -q -p no:cacheprovider tests/test_export_parity.py
neurons=(--quick)
if [[ ${PSN_GPU_CHECK_FULL:-0} == 1 ]]; then
  neurons=()
fi
step "psn bench neurons --device cuda" "$VENV/bin/psn" bench neurons --device cuda "${neurons[@]}" --quiet \
  --out "$out"
step "psn bench runtime (CUDA)" "$VENV/bin/psn" bench runtime --providers "${CUDA_PROVIDERS[@]}" --quiet \
  --out "$out"
step "psn bench serving (CUDA)" "$VENV/bin/psn" bench serving --quiet --out "$out" \
  --providers "$(IFS=,; echo "${CUDA_PROVIDERS[*]}")" --parts classify,streams \
  --connections 1,32 --batches 1,16 --streams 1,64,256 --duration 3

say "done in $((SECONDS - start)) s"
if ((${#failed[@]})); then
  say "failed: $(printf '%s; ' "${failed[@]}")"
  exit 1
fi
say "all steps passed; commit $out"
