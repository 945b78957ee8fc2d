#!/usr/bin/env bash
# Copy a run's WORKDIR and the workers' logs to this machine.
#
# Usage: launch/tpu_copy_results.sh [--flag=value ...]
#
# A gs:// WORKDIR is copied with `gcloud storage rsync --recursive` (repeatable: only new or
# changed files move); a local one with `gcloud compute tpus tpu-vm scp --recurse` from
# WORKER. The log of each WORKER goes to DEST/nnd-run.worker<N>.log.
#
# Each setting is a flag or an environment variable (the flag wins):
#   --project=PROJECT          Google Cloud project (required)
#   --zone=ZONE                zone of the slice (required)
#   --tpu-name=TPU_NAME        name of the slice (required)
#   --workdir=WORKDIR          the WORKDIR given to tpu_run.sh (required)
#   --dest=DEST                local directory (default: runs/<last part of WORKDIR>)
#   --worker=WORKER            worker(s) to copy logs (and a local WORKDIR) from: 0 or a
#                              list like 0,1,2,3 (default: 0)
#   --skip-checkpoints (SKIP_CHECKPOINTS=1)  leave WORKDIR/checkpoints out (gs:// only)
#   REMOTE_DIR, LOG_FILE       as for tpu_run.sh (default: nnd, nnd-run.log)
#   SSH_FLAGS                  more words for gcloud scp, e.g. "--internal-ip"
#   --dry-run (DRY_RUN=1)      print the commands, run nothing
#
# Example:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=nnd-v4 launch/tpu_copy_results.sh \
#     --workdir=gs://my-bucket/nnd/cifar_uniform
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_settings
WORKDIR="${WORKDIR:-}"
DEST="${DEST:-}"
WORKER="${WORKER:-0}"
SKIP_CHECKPOINTS="${SKIP_CHECKPOINTS:-0}"
parse_flags "project zone tpu-name workdir dest worker" "skip-checkpoints" "$@"
require PROJECT ZONE TPU_NAME WORKDIR WORKER
require_relative_path REMOTE_DIR
require_relative_path LOG_FILE
[[ "$WORKER" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "WORKER=$WORKER must be 0 or a list like 0,1,2,3"
DEST="${DEST:-runs/$(basename "${WORKDIR%/}")}"
require_gcloud

run mkdir -p "$DEST"
if [[ "$WORKDIR" == gs://* ]]; then
  args=(gcloud storage rsync --recursive "${WORKDIR%/}" "$DEST")
  if [[ "$SKIP_CHECKPOINTS" == 1 ]]; then args+=(--exclude='^checkpoints/'); fi
  run "${args[@]}"
else
  [[ "$SKIP_CHECKPOINTS" != 1 ]] || warn "--skip-checkpoints applies to gs:// only; copying all"
  remote="${WORKDIR%/}"
  if [[ "$remote" != /* ]]; then remote="$REMOTE_DIR/$remote"; fi
  tpu_scp "${WORKER%%,*}" --recurse "$TPU_NAME:$remote/*" "$DEST/"
fi
for worker in ${WORKER//,/ }; do
  tpu_scp "$worker" "$TPU_NAME:$LOG_FILE" "$DEST/nnd-run.worker$worker.log"
done
