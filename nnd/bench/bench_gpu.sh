#!/usr/bin/env bash
# nnd's benchmarks on a machine with an NVIDIA GPU, in under 5 minutes.
#
# Usage, from anywhere (it works in the repository root):
#   bash nnd/bench/bench_gpu.sh
#
# Runs `python -m nnd.bench` with GPU sizes: train step per (q, p) of the reduced-width
# CIFAR-10 config at batch 128 with the matmul peak and the convolution and attention
# probes; the reverse walk per law; walk memory at K = 10 and 1000 (network walk at batch
# 128); then the full-width CIFAR VDM step (width 128, 32 blocks, batch 128) if time is
# left. The JSON and Markdown are rewritten after each part, so a run cut off by the time
# budget keeps what it finished.
#
# Writes into $OUT: bench_gpu.json, bench_gpu.md, bench_gpu.log (and nvidia-smi.txt).
#
# Settings (environment variables):
#   OUT         output folder (default: ./bench_out)
#   BUDGET      seconds for everything, checks and installs included (default: 285)
#   PYTHON      the Python to use; default: the first of .venv-gpu/bin/python,
#               .venv/bin/python, python3, python whose jax sees a GPU
#   INSTALL     1 (default): if no Python's jax sees a GPU, create .venv-gpu and pip install
#               requirements.txt and JAX_PIP into it; if only some of nnd's packages are
#               missing (e.g. ml_collections), pip install those alone (--no-deps) into
#               SITE, from ./.whl when it holds wheels (no network needed), else from the
#               registry. 0: install nothing.
#   JAX_PIP    pip requirement for jax on GPU (default: jax[cuda12])
#   SITE        folder for missing packages, put on PYTHONPATH (default: /tmp/nnd_bench_site)
#   QUICK=1     tiny sizes (python -m nnd.bench --quick), for a smoke test
#   ALLOW_CPU=1 accept a Python whose jax has no GPU (tests of this script)
#   BENCH_ARGS  more arguments for python -m nnd.bench (word-split), e.g. "--repeats 3"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT="${OUT:-./bench_out}"
BUDGET="${BUDGET:-285}"
INSTALL="${INSTALL:-1}"
JAX_PIP="${JAX_PIP:-jax[cuda12]}"
SITE="${SITE:-/tmp/nnd_bench_site}"
QUICK="${QUICK:-0}"
ALLOW_CPU="${ALLOW_CPU:-0}"
BENCH_ARGS="${BENCH_ARGS:-}"
mkdir -p "$OUT"
LOG="$OUT/bench_gpu.log"
: >"$LOG"

log() { echo "[bench_gpu $((SECONDS))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - SECONDS)); }
# Seconds an install may take: what is left less a minute for the benchmark's smallest part.
install_time() {
  local t=$(($(left) - 60))
  ((t > 10)) || die "too little of BUDGET=$BUDGET left to install anything"
  echo "$t"
}
die() {
  log "error: $*"
  exit 2
}

# jax sees a GPU (or, with ALLOW_CPU=1, jax imports at all).
usable() {
  local py="$1"
  [[ -n "$py" ]] && command -v "$py" >/dev/null 2>&1 || return 1
  timeout 120 "$py" -c "
import sys, jax
ok = jax.default_backend() == 'gpu' or '$ALLOW_CPU' == '1'
print(sys.executable, 'jax', jax.__version__, jax.default_backend(), jax.devices())
sys.exit(0 if ok else 1)" >>"$LOG" 2>&1
}

PY=""
for candidate in "${PYTHON:-}" .venv-gpu/bin/python .venv/bin/python python3 python; do
  if usable "$candidate"; then
    PY="$candidate"
    break
  fi
done
if [[ -z "$PY" ]]; then
  [[ "$INSTALL" == 1 ]] || die "no Python whose jax sees a GPU (set PYTHON, or INSTALL=1)"
  log "no Python whose jax sees a GPU: creating .venv-gpu with requirements.txt and $JAX_PIP"
  python3 -m venv .venv-gpu
  timeout "$(install_time)" .venv-gpu/bin/python -m pip install -q -r requirements.txt \
    "$JAX_PIP" 2>&1 | tee -a "$LOG" || die "pip install failed or ran out of time"
  usable .venv-gpu/bin/python || die ".venv-gpu/bin/python: jax sees no GPU after the install"
  PY=.venv-gpu/bin/python
fi
log "python: $PY"

# nnd's imports that a GPU image may lack; module -> pip package.
declare -A PACKAGE=([ml_collections]=ml_collections [flax]=flax [optax]=optax
  [orbax.checkpoint]=orbax-checkpoint [yaml]=PyYAML [absl]=absl-py [numpy]=numpy)
missing() {
  "$PY" - "${!PACKAGE[@]}" <<'EOF'
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        print(name)
EOF
}
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
mapfile -t absent < <(missing)
if ((${#absent[@]})); then
  log "missing modules: ${absent[*]}"
  [[ "$INSTALL" == 1 ]] || die "install them or set INSTALL=1"
  pkgs=()
  for m in "${absent[@]}"; do pkgs+=("${PACKAGE[$m]}"); done
  source_args=()
  if compgen -G ".whl/*.whl" >/dev/null; then source_args=(--no-index --find-links .whl); fi
  log "pip install --no-deps --target $SITE ${source_args[*]} ${pkgs[*]}"
  timeout "$(install_time)" "$PY" -m pip install -q --no-deps --target "$SITE" \
    "${source_args[@]}" "${pkgs[@]}" 2>&1 | tee -a "$LOG" ||
    die "could not install ${pkgs[*]}: carry them as wheels in ./.whl"
  mapfile -t absent < <(missing)
  ((${#absent[@]} == 0)) || die "still missing: ${absent[*]}"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
  log "$(nvidia-smi -L 2>/dev/null | head -n 4 || true)"
fi

# Attention unchunked: chunks help the CPU's caches, a GPU would run them in sequence.
args=(--out "$OUT/bench_gpu.json" --markdown "$OUT/bench_gpu.md"
  --parts "train,walks,memory,full" --query-chunk -1)
if [[ "$QUICK" == 1 ]]; then
  args+=(--quick)
else
  # Batch 128 (the CIFAR config's), more steps per turn than on CPU (a step takes ms).
  args+=(--batch 128 --steps 20 --repeats 5 --walk-repeats 5)
fi
# shellcheck disable=SC2206  # BENCH_ARGS is word-split on purpose
args+=($BENCH_ARGS)
remaining="$(($(left) - 5))"
((remaining > 30)) || die "only ${remaining}s left of BUDGET=$BUDGET for the benchmark"
log "python -m nnd.bench ${args[*]} (timeout ${remaining}s)"
set +e
PYTHONUNBUFFERED=1 timeout --kill-after=5 "$remaining" "$PY" -m nnd.bench "${args[@]}" 2>&1 |
  tee -a "$LOG"
rc="${PIPESTATUS[0]}"
set -e
if [[ "$rc" == 124 || "$rc" == 137 ]]; then
  log "the time budget ran out: $OUT/bench_gpu.json holds the parts that finished"
elif [[ "$rc" != 0 ]]; then
  log "python -m nnd.bench failed (exit $rc)"
fi
[[ -s "$OUT/bench_gpu.json" ]] || die "no results"
log "done in ${SECONDS}s: $OUT/bench_gpu.json, $OUT/bench_gpu.md, $LOG"
exit "$rc"
