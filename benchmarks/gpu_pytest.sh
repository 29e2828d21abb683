#!/usr/bin/env bash
# One call on the GPU machine (device tool), from the repo root: pytest ids on the fork's tree and,
# with BASE=1, on the tree in .gpu/base-tree.tgz (e.g. pristine 0.47.0: the red side of a
# red/green pair). Carried, git-ignored: .gpu/ (see benchmarks/gpu_site.sh), modelopt/,
# modelopt_recipes/. pytest, pytest-xdist and hypothesis come with the machine's image.
#     OUT=$OUT BASE=1 bash benchmarks/gpu_pytest.sh tests/regression/test_x.py -k cuda
# Writes $OUT/pytest_fork.log, $OUT/pytest_base.log (and junit XML next to them); prints the
# summary of each. Exit status: the fork run's.
set -u
. benchmarks/gpu_site.sh
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} PYTHONUNBUFFERED=1
run() {  # name, extra env...
  local name=$1; shift
  env "$@" PYTHONPATH=/tmp/mo-site:$PWD python3 -m pytest -p no:cacheprovider -o addopts= -rfEs -v \
    --junitxml "$OUT/pytest_$name.xml" "${ARGS[@]}" > "$OUT/pytest_$name.log" 2>&1
  local rc=$?
  echo "== $name (rc=$rc): $(grep -m1 '^modelopt under test' "$OUT/pytest_$name.log")"
  grep -E '^(FAILED|ERROR|SKIPPED|PASSED)|[0-9]+ (passed|failed)|^E  +(AssertionError|.*Error)' "$OUT/pytest_$name.log" \
    | cut -c1-240 | head -40
  return $rc
}
ARGS=("$@")
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  PYTHONPATH=/tmp/mo-site:$PWD python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env_pytest.txt" 2>&1
cat "$OUT/env_pytest.txt"
run fork; rc=$?
[ -n "$BASE_TREE" ] && { run base MODELOPT_FORK_TREE="$BASE_TREE"; true; }
exit $rc
