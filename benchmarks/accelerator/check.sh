#!/usr/bin/env bash
# The accelerator check: one call on a GPU/TPU machine gives every number of issue 20.
#
#   bash benchmarks/accelerator/check.sh OUT_DIR                 # on the accelerator
#   bash benchmarks/accelerator/check.sh --dry-run OUT_DIR       # tiny shapes, any backend
#   bash benchmarks/accelerator/check.sh --official ~/LRA OUT_DIR  # + the official PyTorch
#
# Run from anywhere; it works in the repository root. Steps, in priority order, each
# under its own time limit and all under one deadline (CHECK_BUDGET_S, default 450 s),
# so one slow step cannot eat the rest; what a step measured before its limit is kept:
#   install    the offline wheelhouse (benchmarks/accelerator/install.sh) if
#              ml_collections is missing from the image
#   env        device, driver, Python and jax/jaxlib/flax/... versions
#   tests      scan steps == unrolled, bfloat16 compute, 4 devices == 1 (CPU devices:
#              the machine has one accelerator), the harness's scan FLOP count
#   bench_*    benchmarks.iteration_speed, one process per (pair, batch, dtype):
#              LeNet-5 -> LeNet-5-half at batch 512, ResNet-34 -> ResNet-18 at 64 and
#              512, methods dfkd, mb_dfkd, lra_mb, float32 and bfloat16, against bf16
#              and f32 matmuls of the same process
#   digits     the digits quickstart end to end (teacher training included), summary.json
#   official   the official LRA PyTorch iteration at our shapes (--official DIR,
#              LRA_OFFICIAL_DIR or benchmarks/accelerator/lra_official/: the user's
#              checkout of the official code, never committed; needs `higher`)
#   report     OUT_DIR/accelerator.json and OUT_DIR/accelerator.md (docs/results.md
#              tables), with the extrapolated time of the full CIFAR-10 run
# Every step writes OUT_DIR/steps/NAME.log and NAME.json (status, rc, seconds, limit).
# --dry-run: the same steps with tiny shapes (the digits smoke setting) on whatever
# backend is present; the tests are only collected (the suite runs them). CI runs it.
set -uo pipefail

usage() {
  echo "usage: bash benchmarks/accelerator/check.sh [--dry-run] [--official LRA_CHECKOUT] OUT_DIR" >&2
  exit 2
}

dry_run=0
official="${LRA_OFFICIAL_DIR:-}"
out=""
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --official) shift; (($#)) || usage; official="$1" ;;
    --official=*) official="${1#--official=}" ;;
    -h|--help) usage ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) [[ -z "$out" ]] || usage; out="$1" ;;
  esac
  shift
done
[[ -n "$out" ]] || usage
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# A checkout placed (and carried) at benchmarks/accelerator/lra_official/ is found alone.
if [[ -z "$official" && -d "$here/lra_official/src/agents" ]]; then
  official="$here/lra_official"
fi
if [[ -n "$official" && ! -d "$official/src/agents" ]]; then
  echo "error: --official $official is not a checkout of the official LRA code (no src/agents); pass the folder that holds src/" >&2
  exit 2
fi
[[ -n "$official" ]] && official="$(cd "$official" && pwd)"
if [[ -e "$out" && -n "$(ls -A "$out" 2>/dev/null)" ]]; then
  echo "error: OUT_DIR $out exists and is not empty; pass a new folder (nothing is overwritten)" >&2
  exit 2
fi

cd "$repo" || exit 2
mkdir -p "$out/steps" || exit 2
out="$(cd "$out" && pwd)"
py="${PYTHON:-python3}"
pydeps="${DFKD_PYDEPS:-$here/pydeps}"
export PYTHONPATH="$repo:$pydeps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The dry run compiles on a CPU (2 cores in CI): every limit is 5x longer there.
scale=$((dry_run ? 5 : 1))
budget="${CHECK_BUDGET_S:-$((dry_run ? 1500 : 450))}"
reserve=20  # Kept for the report step.
start=$SECONDS

# step NAME LIMIT_S CMD... : runs CMD under min(LIMIT_S, what the deadline leaves).
step() {
  local name="$1" limit=$(($2 * scale)); shift 2
  local left=$((budget - reserve - (SECONDS - start)))
  ((limit > left)) && limit=$left
  local log="$out/steps/$name.log" status rc t0=$SECONDS
  if ((limit < 10)); then
    status=skipped; rc=-1
    echo "skipped: out of time (budget ${budget}s)" > "$log"
  else
    echo "[$((SECONDS - start))s] $name (limit ${limit}s)" >&2
    timeout -k 10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      124|137) status=timeout ;;
      *) status=failed ;;
    esac
  fi
  printf '{"name": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$status" "$rc" $((SECONDS - t0)) "$limit" > "$out/steps/$name.json"
  echo "    $name: $status ($((SECONDS - t0))s)" >&2
  [[ $status == ok ]]
}

skip() {  # skip NAME REASON
  echo "skipped: $2" > "$out/steps/$1.log"
  printf '{"name": "%s", "status": "skipped", "rc": -1, "seconds": 0, "limit_s": 0, "reason": "%s"}\n' \
    "$1" "$2" > "$out/steps/$1.json"
}

printf '{"dry_run": %s, "budget_s": %d, "official": "%s", "python": "%s", "started": "%s"}\n' \
  "$([[ $dry_run == 1 ]] && echo true || echo false)" "$budget" "$official" "$py" \
  "$(date -u +%FT%TZ)" > "$out/run.json"

# --- install: the offline wheelhouse, only where the image lacks the packages ------
if "$py" -c "import ml_collections" 2>/dev/null; then
  skip install "ml_collections already importable"
else
  step install 60 bash "$here/install.sh" "$pydeps"
fi

# --- env ---------------------------------------------------------------------------
step env 30 "$py" -m benchmarks.accelerator.steps env "$out/environment.json"

# --- tests -------------------------------------------------------------------------
tests=(
  "tests/test_trainer.py::test_scanned_steps_equal_unrolled_steps"
  "tests/test_trainer.py::test_bfloat16_compute_keeps_float32_parameters"
  "tests/test_trainer.py::test_four_devices_match_one_device"
  "tests/test_benchmarks.py::test_accelerator_mode_counts_the_flops_of_every_scanned_step"
)
# -m "": every listed test, the slow tier's too (pyproject's addopts leave it out).
pytest_args=(-q -rA -m "" -o "cache_dir=$out/pytest_cache")
if ((dry_run)); then
  # The suite runs these tests; the dry run checks that every node id still exists.
  step tests 60 "$py" -m pytest --collect-only "${pytest_args[@]}" "${tests[@]}"
else
  # Several processes share the device in turn: no up-front 75% allocation.
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  if ! step tests 150 "$py" -m pytest "${pytest_args[@]}" "--junitxml=$out/tests.xml" \
      "${tests[@]}"; then
    # The failed ones again with float32 matmuls at full precision: tells a real
    # difference from TensorFloat-32 rounding.
    JAX_DEFAULT_MATMUL_PRECISION=highest step tests_highest_precision 90 "$py" -m pytest \
      --lf "${pytest_args[@]}" "--junitxml=$out/tests_highest_precision.xml" "${tests[@]}"
  fi
  unset XLA_PYTHON_CLIENT_PREALLOCATE
fi

# --- benchmarks --------------------------------------------------------------------
bench() {  # bench PAIR BATCH DTYPE LIMIT_S
  local name="bench_$1_b$2_$3" args
  if ((dry_run)); then
    # Tiny digits shapes; with the compilation cache below, each program compiles once.
    args=(--smoke "--methods=$([[ $3 == float32 ]] && echo mb_dfkd,lra_mb || echo lra_mb)")
  else
    args=("--pairs=$1" "--batch_sizes=$2" "--methods=dfkd,mb_dfkd,lra_mb" --repeats=5)
  fi
  step "$name" "$4" "$py" -m benchmarks.iteration_speed "${args[@]}" "--compute_dtype=$3" \
    --matmul_dtypes=float32,bfloat16 "--out=$out/$name.json"
}
if ((dry_run)); then
  export JAX_COMPILATION_CACHE_DIR="$out/jax_cache"
fi
bench lenet5 512 float32 60
bench lenet5 512 bfloat16 60
bench resnet34 64 float32 100

# --- digits end to end (configs/digits.py trains its teacher first) ---------------
digits=(--config=configs/digits.py "--workdir=$out/digits"
        "--config.teacher_dir=$out/digits_teacher" --config.tensorboard=False)
epochs=12
if ((dry_run)); then
  epochs=1
  digits+=(--config.iterations_per_epoch=2 --config.student_steps=1 --config.batch_size=32
           --config.latent_dim=16 --config.memory.samples_per_slot=8)
fi
teacher=(true)
if ((dry_run)); then  # The teacher config's 15 epochs, cut to 2.
  teacher=("$py" -m dfkd_jax.train_teacher --config=configs/teacher/digits.py
           "--workdir=$out/digits_teacher" --config.num_epochs=2)
fi
# bash -c args: PYTHON SUMMARY EPOCHS N TEACHER_CMD(N words) TRAIN_FLAGS...
# shellcheck disable=SC2016  # Expanded by the inner bash.
step digits 150 bash -c '"${@:5:$4}" && "$1" -m dfkd_jax.train "${@:$(($4 + 5))}" &&
  "$1" -m benchmarks.accelerator.steps summary "$2" --epochs="$3"' _ \
  "$py" "$out/digits/summary.json" "$epochs" "${#teacher[@]}" "${teacher[@]}" \
  "${digits[@]}" "--config.num_epochs=$epochs"

# --- the official PyTorch iteration ------------------------------------------------
if [[ -n "$official" ]]; then
  official_args=("--checkout=$official" "--out=$out/official_lra.json")
  ((dry_run)) && official_args+=(--tiny)
  step official 90 "$py" -m benchmarks.accelerator.official_lra "${official_args[@]}"
else
  skip official "no --official checkout (or LRA_OFFICIAL_DIR) given"
fi

bench resnet34 64 bfloat16 90
bench resnet34 512 float32 100
bench resnet34 512 bfloat16 100

# --- report ------------------------------------------------------------------------
reserve=0
step report 20 "$py" -m benchmarks.accelerator.report "$out"
status=$?
echo "total $((SECONDS - start))s; results in $out/accelerator.json and $out/accelerator.md" >&2
exit $status
