#!/usr/bin/env bash
# Upstream's GPU tests for the modules the series touches, on pristine 0.47.0 and on the fork:
# `python -m modelopt_fork upstream-suite --gpu` (one pytest process per test file, no -n;
# docs/upstream-suite.md). Two modes:
#
# 1. here, on the CPU machine, once (needs the upstream checkout and pip's network):
#        bash benchmarks/gpu_upstream_suite.sh prepare /work/upstream-src
#    writes, git-ignored, under .gpu/ (about 40 MiB with whl/):
#      .gpu/upstream-src.tgz   the checkout's tests/, pyproject.toml and .source-commit (its commit)
#      .gpu/nvidia_modelopt-0.47.0-py3-none-any.whl   the pinned wheel (from the materializer's
#                              verified cache): the GPU side unpacks pristine from it, hash-checked
#                              (MODELOPT_FORK_WHEEL), exactly as materialize does here
#      .gpu/whl/unidiff-*.whl  modelopt_fork needs it; the image lacks it. .gpu/whl/ must also hold
#                              ModelOpt's run-time wheels for python 3.12 (benchmarks/gpu_site.sh;
#                              copy them from a checkout that has them, e.g. the main clone's .gpu/whl)
#
# 2. on the GPU machine (device tool `run`), from the repo root, carrying
#        .gpu  modelopt  modelopt_recipes  upstream_tests
#    (the fork's materialized tree: its stamp must match patches/series, else materialize would need
#    the wheel's pristine tree and rebuild it there):
#        OUT=$OUT bash benchmarks/gpu_upstream_suite.sh
#    Both sides in one call (default). Knobs (environment):
#      JOBS=8        test files run side by side (separate processes on the one GPU, 16 cores)
#      TIMEOUT=240   seconds per test file's process; past it the file counts as an error
#      LIMIT=560     seconds for the whole command (the device allows 600 per call)
#      PATHS="tests/gpu/torch/export tests/gpu/torch/quantization"   (default: every tests/gpu/<module>
#                    of the modules the patches change: torch/export, torch/kernels, torch/quantization)
#      SIDE=pristine / SIDE=fork   split over two calls when one is too short: the first call
#                    (SIDE=pristine) leaves $OUT/upstream-suite.json; copy it here to
#                    .gpu/pristine-side.json and carry .gpu again for the second (SIDE=fork), which
#                    then compares with it (--pristine-from)
#    Prints the report (counts per side, differences per test id) and writes to $OUT (5 files):
#    report.txt, env.txt, mo-site-install.log, upstream-suite.json, upstream-suite.tgz (junit and pytest logs of each side,
#    per file). Exit status: the command's (1: a regression or a patch test failing on the fork).
set -u
WHEEL=nvidia_modelopt-0.47.0-py3-none-any.whl

if [ "${1:-}" = prepare ]; then
  src=${2:?usage: gpu_upstream_suite.sh prepare UPSTREAM_CHECKOUT}
  set -e
  mkdir -p .gpu/whl
  commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || cat "$src/.source-commit")
  stage=$(mktemp -d)
  cp -r "$src/tests" "$src/pyproject.toml" "$stage/"
  echo "$commit" > "$stage/.source-commit"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  tar czf .gpu/upstream-src.tgz -C "$stage" tests pyproject.toml .source-commit
  rm -rf "$stage"
  # the pinned wheel, from the materializer's cache (verified when it was put there; verified again there)
  [ -f .modelopt-fork/cache/$WHEEL ] || { echo "no .modelopt-fork/cache/$WHEEL: run python -m modelopt_fork materialize"; exit 2; }
  cp .modelopt-fork/cache/$WHEEL .gpu/$WHEEL
  ls .gpu/whl/unidiff-*.whl > /dev/null 2>&1 \
    || python -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "unidiff==1.0.1"
  [ -n "$(ls .gpu/whl/transformers-*.whl 2>/dev/null)" ] \
    || echo "warning: .gpu/whl has no transformers wheel: copy ModelOpt's run-time wheels there (gpu_site.sh)"
  echo "upstream $commit; carry: .gpu modelopt modelopt_recipes upstream_tests ($(du -sh .gpu | cut -f1) in .gpu)"
  exit 0
fi

. benchmarks/gpu_site.sh   # .gpu/whl -> /tmp/mo-site once per machine; OUT
# a machine whose /tmp/mo-site an earlier script made has no unidiff yet
PYTHONPATH=/tmp/mo-site python3 -c "import unidiff" 2> /dev/null \
  || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mo-site .gpu/whl/unidiff-*.whl
export PYTHONUNBUFFERED=1 MODELOPT_FORK_WHEEL=$PWD/.gpu/$WHEEL
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf /tmp/upstream-src /tmp/us-out && mkdir -p /tmp/upstream-src /tmp/us-out
tar xzf .gpu/upstream-src.tgz -C /tmp/upstream-src
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  PYTHONPATH=/tmp/mo-site:$PWD python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  echo "upstream tests at $(cat /tmp/upstream-src/.source-commit); fork $(git rev-parse HEAD 2>/dev/null || echo '?')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

side=${SIDE:-both}
extra=()
[ -n "${PATHS:-}" ] && { read -r -a p <<< "$PATHS"; extra+=(--paths "${p[@]}"); }
[ "$side" = fork ] && [ -f .gpu/pristine-side.json ] && extra+=(--pristine-from .gpu/pristine-side.json)
PYTHONPATH=/tmp/mo-site:$PWD timeout -k 15 "${LIMIT:-560}" python3 -m modelopt_fork upstream-suite --gpu \
  --source /tmp/upstream-src --side "$side" --jobs "${JOBS:-8}" --timeout "${TIMEOUT:-240}" --out /tmp/us-out \
  "${extra[@]}" > "$OUT/report.txt" 2> /tmp/us-out/stderr.log
rc=$?
[ $rc = 124 ] && echo "upstream-suite: killed at LIMIT=${LIMIT:-560} s: the per-file junit it finished is in upstream-suite.tgz (work-<side>/); split with SIDE=pristine / SIDE=fork" | tee -a "$OUT/report.txt"
cp /tmp/us-out/upstream-suite.json "$OUT/" 2>/dev/null
tar czf "$OUT/upstream-suite.tgz" -C /tmp/us-out .
# the short table: counts per side, the differences per id, the summary (the patch tests' own list, all of
# them red on pristine / green on the fork when all is well, only in report.txt)
awk '/^  patch tests \(the series/ {print; skip=1; next} skip && /^    / {next} {skip=0; print}' "$OUT/report.txt" \
  | cut -c1-220 | head -80
tail -2 /tmp/us-out/stderr.log
exit $rc
