#!/usr/bin/env bash
# Distils on a Cloud TPU VM slice: create (or reuse) it, install this checkout on every
# worker, run the same `python -m dfkd_jax.train ...` on all workers, stream the logs,
# and rerun until the run is done (every rerun resumes from the latest checkpoint).
#
# Usage (see launch/README.md):
#   TPU_NAME=dfkd-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   RUNTIME_VERSION=tpu-ubuntu2204-base CONFIG=configs/cifar10.py:lra_mb \
#   WORKDIR=/mnt/shared/runs/c10 launch/tpu_pod.sh [--dry-run] [-- EXTRA_TRAIN_FLAGS...]
#
# Required: TPU_NAME, ZONE, ACCELERATOR_TYPE, RUNTIME_VERSION, CONFIG, WORKDIR (a
# directory every worker sees and that outlives the VMs: Filestore/NFS or a gcsfuse
# mount, set up by SETUP_COMMAND). Optional: PROJECT, SPOT=1 (spot VMs),
# SETUP_COMMAND (run on every worker after installing, e.g. mounting WORKDIR),
# MAX_ATTEMPTS (default 20), LOG_FILE (default tpu_pod_<TPU_NAME>.log),
# PYTHON_VERSION (default 3.12; jax 0.10 needs >= 3.11, the TPU VM images ship 3.10,
# so every worker gets this Python from uv in the virtual environment ~/dfkd_venv).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

dry_run=0
extra=()
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument '$1' (train flags go after --)" >&2; exit 2 ;;
  esac
  shift
done

missing=()
for var in TPU_NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION CONFIG WORKDIR; do
  if [[ -z "${!var:-}" ]]; then missing+=("$var"); fi
done
if ((${#missing[@]})); then
  echo "error: set ${missing[*]} (see launch/README.md), e.g." >&2
  echo "  TPU_NAME=dfkd-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \\" >&2
  echo "  RUNTIME_VERSION=tpu-ubuntu2204-base CONFIG=configs/cifar10.py:lra_mb \\" >&2
  echo "  WORKDIR=/mnt/shared/runs/c10 $0" >&2
  exit 2
fi
max_attempts="${MAX_ATTEMPTS:-20}"
if ! [[ "$max_attempts" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: MAX_ATTEMPTS='$max_attempts' must be a positive integer" >&2
  exit 2
fi
python_version="${PYTHON_VERSION:-3.12}"
if ! [[ "$python_version" =~ ^3\.(1[1-9]|[2-9][0-9])$ ]]; then
  echo "error: PYTHON_VERSION='$python_version' must be 3.11 or newer, e.g. 3.12" \
    "(jax 0.10 and flax 0.12 need Python >= 3.11)" >&2
  exit 2
fi
log_file="${LOG_FILE:-tpu_pod_${TPU_NAME}.log}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
archive="${TMPDIR:-/tmp}/dfkd_jax_${TPU_NAME}.tar.gz"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project="$PROJECT"); fi

# Prints a command (shell-quoted); runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((dry_run == 0)); then "$@"; fi
}

# Runs a shell command line on every worker of the slice.
on_all_workers() {
  run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

tpu_state() {
  "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' \
    2>/dev/null || true
}

create_tpu() {
  local create=("${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}"
                --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ "${SPOT:-0}" == 1 ]]; then create+=(--spot); fi
  run "${create[@]}"
}

# Creates the slice unless a READY one exists; a preempted or failed one is replaced.
ensure_tpu() {
  local state=""
  if ((dry_run)); then
    run "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)'
    echo "# if it does not exist (or is PREEMPTED: after deleting it):"
  else
    state="$(tpu_state)"
  fi
  case "$state" in
    READY) echo "reusing TPU $TPU_NAME (READY)" ;;
    "") create_tpu ;;
    CREATING|STARTING|RESTARTING|REPAIRING)
      echo "TPU $TPU_NAME is $state; waiting"; sleep 60; ensure_tpu ;;
    *)
      echo "TPU $TPU_NAME is $state; deleting and recreating it"
      run "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
      create_tpu ;;
  esac
}

install() {
  run git -C "$repo" archive --format=tar.gz --prefix=dfkd_jax/ -o "$archive" HEAD
  run "${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME":dfkd_jax.tar.gz "${where[@]}" \
    --worker=all
  # The images' system Python is 3.10: uv (from PyPI) fetches Python $python_version
  # into a fresh virtual environment, which the training command activates.
  on_all_workers "rm -rf ~/dfkd_jax && tar xzf ~/dfkd_jax.tar.gz -C ~ \
&& cd ~/dfkd_jax && python3 -m pip install -q --user uv && rm -rf ~/dfkd_venv \
&& ~/.local/bin/uv venv -q --python $python_version ~/dfkd_venv \
&& ~/.local/bin/uv pip install -q --python ~/dfkd_venv/bin/python -e '.[tpu]'"
  if [[ -n "${SETUP_COMMAND:-}" ]]; then on_all_workers "$SETUP_COMMAND"; fi
}

train_command="cd ~/dfkd_jax && . ~/dfkd_venv/bin/activate"
train_command+=" && python3 -m dfkd_jax.train --config=$(printf '%q' "$CONFIG")"
train_command+=" --workdir=$(printf '%q' "$WORKDIR")"
for flag in "${extra[@]}"; do train_command+=" $(printf '%q' "$flag")"; done

ensure_tpu
install
for ((attempt = 1; attempt <= max_attempts; attempt++)); do
  echo "attempt $attempt/$max_attempts (log: $log_file)"
  status=0
  # jax.distributed starts on every worker by itself (Cloud TPU detection); a
  # preempted run saves a checkpoint and exits 75, a rerun resumes from it.
  if ((dry_run)); then
    on_all_workers "$train_command"
    echo "# dry run: nothing was run"
    exit 0
  fi
  attempt_log="$(mktemp)"
  on_all_workers "$train_command" 2>&1 | tee -a "$log_file" "$attempt_log" || status=$?
  preempted=0
  # gcloud's exit status over several workers need not be the workers' 75.
  if ((status == 75)) || grep -q "preemption notice (SIGTERM)" "$attempt_log"; then
    preempted=1
  fi
  rm -f "$attempt_log"
  if ((status == 0)); then echo "done: $WORKDIR/summary.json"; exit 0; fi
  state="$(tpu_state)"
  if [[ "$state" == READY ]] && ((preempted == 0)); then
    # Not preempted and the slice is fine: a real error; rerunning would not help.
    echo "error: the run failed (exit $status) on a READY slice; see $log_file" >&2
    exit "$status"
  fi
  echo "attempt $attempt stopped (exit $status, TPU ${state:-gone}); resuming" >&2
  if [[ "$state" != READY ]]; then ensure_tpu; install; fi
done
echo "error: not done after $max_attempts attempts; see $log_file" >&2
exit 1
