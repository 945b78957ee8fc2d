#!/usr/bin/env bash
# Run an nnd config on every worker of a TPU slice, in the background.
#
# Usage: launch/tpu_run.sh [--flag=value ...] [-- more nnd.main flags]
#        launch/tpu_run.sh --stop [--flag=value ...]
#
# Starts `python -m nnd.main --config=CONFIG --workdir=WORKDIR --mode=MODE` on all workers at
# once (`gcloud compute tpus tpu-vm ssh --worker=all`), under nohup with its output appended
# to LOG_FILE on each worker, so a dropped ssh connection does not stop it. No coordinator
# flags are passed: on a pod slice jax.distributed finds the other workers by itself.
# Refuses to start while a previous run is alive on a worker (see --stop).
#
# Each setting is a flag or an environment variable (the flag wins):
#   --project=PROJECT          Google Cloud project (required)
#   --zone=ZONE                zone of the slice (required)
#   --tpu-name=TPU_NAME        name of the slice (required)
#   --config=CONFIG            config file relative to the repository, e.g.
#                              configs/cifar_uniform.py (required)
#   --workdir=WORKDIR          checkpoints, metrics, pictures (required). Use a gs://BUCKET/...
#                              path that every worker shares; a local path (relative to
#                              REMOTE_DIR) is a separate directory on each worker.
#   --mode=MODE                train, eval or sample (default: train)
#   --stop (STOP=1)            stop the run on every worker (kill by its pid file)
#   RUN_ENV                    environment for nnd on the workers, words KEY=VALUE, e.g.
#                              "TFDS_DATA_DIR=gs://my-bucket/tfds" (default: none)
#   LOG_FILE                   log on each worker, relative to home (default: nnd-run.log;
#                              the pid goes to the same name with .pid for .log)
#   REMOTE_DIR, REMOTE_VENV    as for tpu_install.sh (default: nnd, nnd-venv)
#   SSH_FLAGS                  more words for gcloud ssh, e.g. "--internal-ip"
#   --dry-run (DRY_RUN=1)      print the commands, run nothing
#
# Re-running the same command after a stop or a preemption resumes from the last
# checkpoint in WORKDIR.
# Example:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=nnd-v4 launch/tpu_run.sh \
#     --config=configs/cifar_uniform.py --workdir=gs://my-bucket/nnd/cifar_uniform
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_settings
CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
MODE="${MODE:-train}"
STOP="${STOP:-0}"
RUN_ENV="${RUN_ENV:-}"
parse_flags "project zone tpu-name config workdir mode" "stop" "$@"
require PROJECT ZONE TPU_NAME
require_relative_path REMOTE_DIR
require_relative_path REMOTE_VENV
require_relative_path LOG_FILE
require_gcloud

log="$(quote "$LOG_FILE")"
pid="$(quote "${LOG_FILE%.log}.pid")"
alive="[ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null"

if [[ "$STOP" == 1 ]]; then
  tpu_ssh all "if $alive; then kill \"\$(cat $pid)\" && echo \"\$(hostname): stopped pid \$(cat $pid)\"; else echo \"\$(hostname): nnd is not running\"; fi; rm -f $pid"
  exit 0
fi

require CONFIG WORKDIR MODE
case "$MODE" in
  train | eval | sample) ;;
  *) die "MODE=$MODE must be train, eval or sample" ;;
esac
[[ "$CONFIG" == /* ]] || [[ -f "$NND_ROOT/$CONFIG" ]] ||
  warn "CONFIG=$CONFIG is not in this checkout; it must exist in REMOTE_DIR on the workers"
if [[ "$WORKDIR" != gs://* ]]; then
  warn "WORKDIR=$WORKDIR is local to each worker: on a multi-host slice (e.g. v4-16 and up) use a gs:// path that all workers share, or checkpoints cannot be written and resumed"
fi

read -r -a run_env <<<"$RUN_ENV"
for word in ${run_env[@]+"${run_env[@]}"}; do
  [[ "$word" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "RUN_ENV word '$word' is not KEY=VALUE"
done
main="\"\$HOME\"/$(quote "$REMOTE_VENV")/bin/python $(quote_all -m nnd.main --config="$CONFIG" \
  --workdir="$WORKDIR" --mode="$MODE" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
# NND_DISTRIBUTED=1: nnd calls jax.distributed.initialize(), which finds the slice's
# workers from the TPU metadata (one host or many); no coordinator flags are passed.
main="env $(quote_all NND_DISTRIBUTED=1 ${run_env[@]+"${run_env[@]}"}) $main"
tpu_ssh all "if $alive; then echo \"\$(hostname): nnd is already running (pid \$(cat $pid)); stop it with tpu_run.sh --stop\" >&2; exit 1; fi; printf '=== %s %s: %s\\n' \"\$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"\$(hostname)\" $(quote "$main") >> $log; (cd $(quote "$REMOTE_DIR") && exec nohup $main) >> $log 2>&1 < /dev/null & echo \$! > $pid; echo \"\$(hostname): started pid \$! (log ~/$LOG_FILE)\""
echo "Follow the log with: launch/tpu_logs.sh (worker 0) or launch/tpu_logs.sh --worker=all" >&2
