# shellcheck shell=bash
# Shared helpers for the launch scripts; sourced, not run.
#
# run CMD ARGS...   print "+ CMD ARGS..." (shell-quoted, one line) and run it, unless
#                   DRY_RUN=1, in which case it only prints.
# run_sh STRING     the same for a shell snippet with redirections or '&' (bash -c STRING).
# parse_flags       --name=value / --name value / boolean --name flags -> NAME variables.
# require VAR...    exit 2 naming the first unset or empty variable (and its flag).
# tpu_ssh / tpu_scp gcloud compute tpus tpu-vm ssh|scp with --zone, --project, SSH_FLAGS.

# Globals for the sourcing script: the repository root, the dry-run switch and the words
# after '--' on its command line.
# shellcheck disable=SC2034
{
  NND_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  DRY_RUN="${DRY_RUN:-0}"
  EXTRA_ARGS=()
}

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

warn() {
  echo "$(basename "$0"): warning: $*" >&2
}

# The comment block at the top of the calling script, without the '#! ' line and '# '.
usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

# Quote one word for display so that the printed line can be pasted into a shell.
# A --flag=value word keeps its --flag= outside the quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./^-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

run() {
  echo "+ $(quote_all "$@")"
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

run_sh() {
  echo "+ $1"
  if [[ "$DRY_RUN" != 1 ]]; then
    bash -c "$1"
  fi
}

# parse_flags "VALUE FLAGS" "BOOLEAN FLAGS" "$@"
# --tpu-name=x and --tpu-name x set TPU_NAME=x; a boolean --spot sets SPOT=1. -h/--help
# prints usage and exits 0; --dry-run sets DRY_RUN=1; words after '--' go to EXTRA_ARGS.
parse_flags() {
  local value_flags=" $1 " bool_flags=" $2 dry-run " arg name value var
  shift 2
  while (($#)); do
    arg="$1"
    shift
    case "$arg" in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        # shellcheck disable=SC2034
        EXTRA_ARGS=("$@")
        return 0
        ;;
      --*=*)
        name="${arg%%=*}"
        name="${name#--}"
        value="${arg#*=}"
        ;;
      --*)
        name="${arg#--}"
        value=""
        ;;
      *)
        die "unexpected argument '$arg' (see -h)"
        ;;
    esac
    var="$(printf '%s' "$name" | tr '[:lower:]-' '[:upper:]_')"
    if [[ "$value_flags" == *" $name "* ]]; then
      if [[ "$arg" != *=* ]]; then
        (($#)) || die "--$name needs a value"
        value="$1"
        shift
      fi
      printf -v "$var" '%s' "$value"
    elif [[ "$bool_flags" == *" $name "* ]]; then
      [[ "$arg" != *=* ]] || die "--$name takes no value"
      printf -v "$var" '%s' 1
    else
      die "unknown option '$arg' (see -h)"
    fi
  done
}

require() {
  local var flag
  for var in "$@"; do
    if [[ -z "${!var:-}" ]]; then
      flag="$(printf '%s' "$var" | tr '[:upper:]_' '[:lower:]-')"
      die "$var is not set: pass --$flag=... or set $var in the environment (see -h)"
    fi
  done
}

# A path on the workers, relative to the home directory: no '..', not absolute, not empty.
require_relative_path() {
  local var="$1"
  case "${!var}" in
    "" | /* | . | ./ | *..*) die "$var='${!var}' must be a path relative to the home directory on the workers" ;;
  esac
}

require_gcloud() {
  if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud >/dev/null; then
    die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk)"
  fi
}

# Settings shared by the tpu_*.sh scripts, with their defaults. The remote paths are
# relative to the home directory on each worker (where a gcloud ssh command starts).
tpu_settings() {
  PROJECT="${PROJECT:-}"
  ZONE="${ZONE:-}"
  TPU_NAME="${TPU_NAME:-}"
  SSH_FLAGS="${SSH_FLAGS:-}"
  REMOTE_DIR="${REMOTE_DIR:-nnd}"
  REMOTE_VENV="${REMOTE_VENV:-nnd-venv}"
  LOG_FILE="${LOG_FILE:-nnd-run.log}"
}

# Flags every tpu-vm ssh/scp call gets: --zone, --project and the words of SSH_FLAGS.
tpu_flags() {
  TPU_FLAGS=(--zone="$ZONE" --project="$PROJECT")
  local extra=()
  read -r -a extra <<<"${SSH_FLAGS:-}"
  TPU_FLAGS+=(${extra[@]+"${extra[@]}"})
}

# tpu_ssh WORKER COMMAND: run COMMAND (a remote shell string) on WORKER (all, 0, 0,2, ...).
tpu_ssh() {
  tpu_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker="$1" "${TPU_FLAGS[@]}" --command="$2"
}

# tpu_scp WORKER ARGS...: scp between this machine and WORKER.
tpu_scp() {
  local worker="$1"
  shift
  tpu_flags
  run gcloud compute tpus tpu-vm scp "$@" --worker="$worker" "${TPU_FLAGS[@]}"
}
