#!/usr/bin/env bash
# Delete a Cloud TPU VM slice (after asking, unless --yes). A gs:// WORKDIR outlives it.
#
# Usage: launch/tpu_delete.sh [--flag=value ...]
#
# Each setting is a flag or an environment variable (the flag wins):
#   --project=PROJECT          Google Cloud project (required)
#   --zone=ZONE                zone of the slice (required)
#   --tpu-name=TPU_NAME        name of the slice (required)
#   --yes (YES=1)              do not ask for confirmation
#   --dry-run (DRY_RUN=1)      print the command, run nothing (and ask nothing)
#
# Logs and a local WORKDIR on the workers are lost: run tpu_copy_results.sh first.
# Example:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=nnd-v4 launch/tpu_delete.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_settings
YES="${YES:-0}"
parse_flags "project zone tpu-name" "yes" "$@"
require PROJECT ZONE TPU_NAME
require_gcloud

if [[ "$YES" != 1 && "$DRY_RUN" != 1 ]]; then
  answer=""
  read -r -p "Delete TPU slice '$TPU_NAME' in $ZONE (project $PROJECT)? [y/N] " answer || true
  case "$answer" in
    y | Y | yes | YES) ;;
    *)
      echo "Not deleted." >&2
      exit 1
      ;;
  esac
fi
run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
