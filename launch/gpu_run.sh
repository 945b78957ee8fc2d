#!/usr/bin/env bash
# Run an nnd config on one machine with all its GPUs (or those in --gpus).
#
# Usage: launch/gpu_run.sh [--flag=value ...] [-- more nnd.main flags]
#
# One process drives every visible GPU (the batch is sharded over a ('data',) mesh of them),
# so no jax.distributed set-up is needed. CONFIG and a local WORKDIR are relative to the
# repository root, where the script runs.
#
# Each setting is a flag or an environment variable (the flag wins):
#   --config=CONFIG            e.g. configs/cifar_uniform.py (required)
#   --workdir=WORKDIR          checkpoints, metrics, pictures, e.g. runs/cifar_uniform or
#                              gs://BUCKET/... (required)
#   --mode=MODE                train, eval or sample (default: train)
#   --gpus=GPUS                sets CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: keep the
#                              environment's CUDA_VISIBLE_DEVICES, i.e. all GPUs if unset)
#   --install (INSTALL=1)      create VENV if missing and pip install requirements.txt and
#                              JAX_PIP into it first
#   --venv=VENV                virtual environment (default: .venv)
#   --jax-spec=JAX_PIP        pip requirement for jax on GPU (default: jax[cuda12])
#   --python=PYTHON            Python (3.11 or later) that creates VENV (default: python3)
#   --background (BACKGROUND=1)  run under nohup, output appended to LOG_FILE; the run
#                              survives a closed terminal or ssh session
#   LOG_FILE                   log for --background (default: runs/<last part of WORKDIR>.log)
#   --dry-run (DRY_RUN=1)      print the commands, run nothing
#
# Re-running the same command resumes from the last checkpoint in WORKDIR.
# Example:
#   launch/gpu_run.sh --install --config=configs/cifar_uniform.py --workdir=runs/cifar_uniform
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
MODE="${MODE:-train}"
GPUS="${GPUS:-}"
INSTALL="${INSTALL:-0}"
VENV="${VENV:-.venv}"
JAX_PIP="${JAX_PIP:-jax[cuda12]}"
PYTHON="${PYTHON:-python3}"
BACKGROUND="${BACKGROUND:-0}"
LOG_FILE="${LOG_FILE:-}"
parse_flags "config workdir mode gpus venv jax-spec python" "install background" "$@"
require CONFIG WORKDIR MODE VENV
case "$MODE" in
  train | eval | sample) ;;
  *) die "MODE=$MODE must be train, eval or sample" ;;
esac
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPUS=$GPUS must be a list like 0,1,2,3"
LOG_FILE="${LOG_FILE:-runs/$(basename "${WORKDIR%/}").log}"

echo "+ cd $(quote "$NND_ROOT")"
cd "$NND_ROOT"
[[ -f "$CONFIG" ]] || die "CONFIG=$CONFIG not found under $NND_ROOT"

if [[ "$INSTALL" == 1 ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    run "$PYTHON" -m venv "$VENV"
  fi
  run "$VENV/bin/python" -m pip install --upgrade pip
  run "$VENV/bin/python" -m pip install -r requirements.txt "$JAX_PIP"
elif [[ "$DRY_RUN" != 1 && ! -x "$VENV/bin/python" ]]; then
  die "no $VENV/bin/python: pass --install to create it"
fi

cmd=()
if [[ -n "$GPUS" ]]; then cmd+=(env CUDA_VISIBLE_DEVICES="$GPUS"); fi
cmd+=("$VENV/bin/python" -m nnd.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE"
  ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
if [[ "$BACKGROUND" == 1 ]]; then
  run mkdir -p "$(dirname "$LOG_FILE")"
  log="$(quote "$LOG_FILE")"
  run_sh "nohup $(quote_all "${cmd[@]}") >> $log 2>&1 < /dev/null & echo \"started pid \$! (log $log)\""
else
  run "${cmd[@]}"
fi
