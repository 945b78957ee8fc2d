#!/usr/bin/env bash
# Put nnd on every worker of a TPU slice and install it in a virtual environment.
#
# Usage: launch/tpu_install.sh [--flag=value ...]
#
# Each setting is a flag or an environment variable (the flag wins):
#   --project=PROJECT          Google Cloud project (required)
#   --zone=ZONE                zone of the slice (required)
#   --tpu-name=TPU_NAME        name of the slice (required)
#   --repo=REPO                a git URL (cloned on each worker) or a local directory (packed
#                              with tar, less .git, .venv and runs/, and copied to every worker
#                              with `gcloud compute tpus tpu-vm scp --worker=all`)
#                              (default: this checkout, uncommitted changes included)
#   --branch=BRANCH            branch or tag to clone when REPO is a git URL (default: main)
#   --python-version=PYTHON_VERSION  Python of the venv (default: 3.11; the TPU images ship
#                              3.10, so uv fetches it)
#   --jax-spec=JAX_PIP        pip requirement for jax on TPU (default: jax[tpu])
#   --prepare=PREPARE          image datasets to prepare on every worker after the install,
#                              e.g. cifar10 or "cifar10 mnist" (python -m nnd.data prepare; into
#                              ~/tensorflow_datasets, where training reads them) (default: none)
#   --data-cache=DATA_CACHE    a gs:// folder for PREPARE: worker 0 downloads and prepares once
#                              and puts the result there (or finds it there already), then every
#                              worker copies it to its own disk (default: each worker downloads)
#   REMOTE_DIR                 where nnd goes on each worker, relative to the home directory
#                              (default: nnd; replaced on every install)
#   REMOTE_VENV                the virtual environment, relative to home (default: nnd-venv)
#   SSH_FLAGS                  more words for gcloud ssh/scp, e.g. "--internal-ip"
#   --dry-run (DRY_RUN=1)      print the commands, run nothing
#
# A private git repository needs credentials on the workers; a local REPO does not.
# Example:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=nnd-v4 launch/tpu_install.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_settings
REPO="${REPO:-$NND_ROOT}"
BRANCH="${BRANCH:-main}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_PIP="${JAX_PIP:-jax[tpu]}"
PREPARE="${PREPARE:-}"
DATA_CACHE="${DATA_CACHE:-}"
parse_flags "project zone tpu-name repo branch python-version jax-spec prepare data-cache" "" "$@"
require PROJECT ZONE TPU_NAME REPO BRANCH PYTHON_VERSION JAX_PIP
read -r -a datasets <<<"$PREPARE"
for name in ${datasets[@]+"${datasets[@]}"}; do
  [[ "$name" == cifar10 || "$name" == mnist ]] ||
    die "PREPARE names '$name': only cifar10 and mnist are prepared (digits and the toys need nothing)"
done
[[ -z "$DATA_CACHE" || ${#datasets[@]} -gt 0 ]] || die "DATA_CACHE is set but PREPARE names no dataset"
require_relative_path REMOTE_DIR
require_relative_path REMOTE_VENV
require_gcloud

dir="$(quote "$REMOTE_DIR")"
venv="$(quote "$REMOTE_VENV")"

# 1. The code.
if [[ -d "$REPO" ]]; then
  [[ -f "$REPO/requirements.txt" && -d "$REPO/nnd" ]] ||
    die "REPO=$REPO is a directory but not an nnd checkout (no requirements.txt or nnd/)"
  tarball="${TMPDIR:-/tmp}/nnd-$TPU_NAME.tar.gz"
  run tar -czf "$tarball" -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./runs \
    --exclude=__pycache__ --exclude=.pytest_cache .
  tpu_scp all "$tarball" "$TPU_NAME:nnd-src.tar.gz"
  run rm -f "$tarball"
  tpu_ssh all "rm -rf $dir && mkdir -p $dir && tar -xzf nnd-src.tar.gz -C $dir && rm -f nnd-src.tar.gz"
elif [[ "$REPO" == *://* || "$REPO" == *@*:* ]]; then
  repo="$(quote "$REPO")"
  branch="$(quote "$BRANCH")"
  tpu_ssh all "if [ -d $dir/.git ]; then git -C $dir fetch --depth 1 origin $branch && git -C $dir checkout --force -B $branch FETCH_HEAD; else rm -rf $dir && git clone --depth 1 --branch $branch $repo $dir; fi"
else
  die "REPO=$REPO is neither a local directory nor a git URL (https://..., git@host:...)"
fi

# 2. Python and the packages: uv installs a Python the image lacks, then the requirements.
tpu_ssh all "export PATH=\"\$HOME/.local/bin:\$PATH\"; { command -v uv >/dev/null || python3 -m pip install --user --quiet uv || { sudo apt-get update -q && sudo apt-get install -y -q python3-pip && python3 -m pip install --user --quiet uv; }; } && { [ -x $venv/bin/python ] || uv venv --python $(quote "$PYTHON_VERSION") $venv; } && uv pip install --python $venv/bin/python -r $dir/requirements.txt $(quote "$JAX_PIP")"

# 3. A check that needs no TPU (a pod slice's TPUs start only when every worker runs jax).
tpu_ssh all "cd $dir && \"\$HOME\"/$venv/bin/python -c 'import jax, flax, nnd.main; print(\"nnd ok: jax\", jax.__version__)'"

# 4. The data, ahead of training, so that no worker downloads when the run starts. With
#    DATA_CACHE worker 0 fills the bucket first and the others copy from it; the copy
#    goes to each worker's local disk, where the training reads it.
if ((${#datasets[@]})); then
  prepare="cd $dir && \"\$HOME\"/$venv/bin/python -m nnd.data prepare $(quote_all "${datasets[@]}")"
  if [[ -n "$DATA_CACHE" ]]; then
    prepare+=" --cache=$(quote "$DATA_CACHE")"
    tpu_ssh 0 "$prepare"
  fi
  tpu_ssh all "$prepare"
fi
