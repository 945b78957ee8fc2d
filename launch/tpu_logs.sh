#!/usr/bin/env bash
# Say whether nnd is running and follow its log on one worker or on all of them.
#
# Usage: launch/tpu_logs.sh [--flag=value ...]
#
# Each setting is a flag or an environment variable (the flag wins):
#   --project=PROJECT          Google Cloud project (required)
#   --zone=ZONE                zone of the slice (required)
#   --tpu-name=TPU_NAME        name of the slice (required)
#   --worker=WORKER            0 (process 0 logs the training metrics), 1, 0,2 or all; with
#                              several workers each line starts with the worker's host name
#                              (default: 0)
#   --tail=TAIL                lines of history to show first (default: 100)
#   --no-follow (NO_FOLLOW=1)  print the last TAIL lines and return instead of following
#   LOG_FILE                   as for tpu_run.sh (default: nnd-run.log)
#   SSH_FLAGS                  more words for gcloud ssh, e.g. "--internal-ip"
#   --dry-run (DRY_RUN=1)      print the commands, run nothing
#
# Ctrl-C stops following; the run itself goes on.
# Example:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=nnd-v4 launch/tpu_logs.sh --worker=all
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_settings
WORKER="${WORKER:-0}"
TAIL="${TAIL:-100}"
NO_FOLLOW="${NO_FOLLOW:-0}"
parse_flags "project zone tpu-name worker tail" "no-follow" "$@"
require PROJECT ZONE TPU_NAME WORKER TAIL
require_relative_path LOG_FILE
[[ "$TAIL" =~ ^[0-9]+$ ]] || die "TAIL=$TAIL must be a number of lines"
[[ "$WORKER" =~ ^(all|[0-9]+(,[0-9]+)*)$ ]] || die "WORKER=$WORKER must be all, 0 or a list like 0,1"
require_gcloud

log="$(quote "$LOG_FILE")"
pid="$(quote "${LOG_FILE%.log}.pid")"
status="if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then echo \"\$(hostname): nnd running (pid \$(cat $pid))\"; else echo \"\$(hostname): nnd not running\"; fi"
if [[ "$NO_FOLLOW" == 1 ]]; then
  tail="tail -n $TAIL $log"
else
  tail="tail -n $TAIL -F $log"
fi
if [[ ! "$WORKER" =~ ^[0-9]+$ ]]; then
  tail="$tail | sed -u \"s/^/\$(hostname): /\""
fi
tpu_ssh "$WORKER" "$status; $tail"
