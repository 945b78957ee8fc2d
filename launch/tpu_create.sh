#!/usr/bin/env bash
# Create a Cloud TPU VM slice (one VM per worker; a v4-32 has 4 workers).
#
# Usage: launch/tpu_create.sh [--flag=value ...]
#
# Each setting is a flag or an environment variable (the flag wins):
#   --project=PROJECT                  Google Cloud project (required)
#   --zone=ZONE                        zone with TPU capacity, e.g. us-central2-b (required)
#   --tpu-name=TPU_NAME                name of the slice (required)
#   --accelerator-type=ACCELERATOR_TYPE  e.g. v4-8 (one host), v4-32 (4 hosts) (required)
#   --runtime-version=RUNTIME_VERSION  TPU VM image (default: tpu-ubuntu2204-base, for v4;
#                                      v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5,
#                                      v6e: v2-alpha-tpuv6e)
#   --spot (SPOT=1)                    a Spot slice: cheaper, can be preempted at any time
#   --preemptible (PREEMPTIBLE=1)      the older preemptible model (24 h limit)
#   CREATE_FLAGS                       more words for `gcloud ... create`, e.g.
#                                      "--network=my-net --internal-ips"
#   --dry-run (DRY_RUN=1)              print the commands, run nothing
#
# Example:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=nnd-v4 launch/tpu_create.sh \
#     --accelerator-type=v4-32 --spot
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_settings
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
CREATE_FLAGS="${CREATE_FLAGS:-}"
parse_flags "project zone tpu-name accelerator-type runtime-version" "spot preemptible" "$@"
require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION
if [[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]]; then
  die "choose one of --spot and --preemptible"
fi
require_gcloud

args=(gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE"
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" --project="$PROJECT")
if [[ "$SPOT" == 1 ]]; then args+=(--spot); fi
if [[ "$PREEMPTIBLE" == 1 ]]; then args+=(--preemptible); fi
read -r -a extra <<<"$CREATE_FLAGS"
args+=(${extra[@]+"${extra[@]}"})
run "${args[@]}"
