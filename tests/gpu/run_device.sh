#!/usr/bin/env bash
# One call on the device machine (see tests/gpu/RESULTS.md for how it is invoked): install the
# carried wheels, then side by side -- every GPU test body (cuda-parametrized tests, the whole
# matrix, tests/gpu), the MoE export matrix on pristine upstream 0.47.0 and on the fork, and
# the version gate. Logs and tables go under $OUT; a summary is printed last.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.devsite:$PWD PYTHONWARNINGS=ignore HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
LIMIT=${LIMIT:-480}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, modelopt; print('torch', torch.__version__, 'transformers', transformers.__version__, 'modelopt', modelopt.__version__, modelopt.__file__)"
} > "$OUT/env.txt" 2>&1
M="python3 -m modelopt_fork"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # several processes share the CPU cores
timeout "$LIMIT" python3 -m pytest -q -p no:cacheprovider -n ${JOBS:-8} -m gpu ${TESTS:-tests} -rfs > "$OUT/pytest_gpu.txt" 2>&1 &
P1=$!
[ -n "${SKIP_MATRIX:-}" ] || timeout "$LIMIT" $M matrix --upstream 0.47.0 --device cuda --markdown --json "$OUT/matrix_pristine_cuda.json" \
  > "$OUT/matrix_pristine_cuda.md" 2> "$OUT/matrix_pristine_cuda.err" &
P2=$!
[ -n "${SKIP_MATRIX:-}" ] || timeout "$LIMIT" $M matrix --device cuda --markdown --json "$OUT/matrix_fork_cuda.json" \
  > "$OUT/matrix_fork_cuda.md" 2> "$OUT/matrix_fork_cuda.err" &
P3=$!
timeout "$LIMIT" $M gate --device cuda --jobs 6 --write "$OUT/gate_cuda.md" --json "$OUT/gate_cuda.json" \
  > /dev/null 2> "$OUT/gate_cuda.err" &
P4=$!
wait $P1; echo "pytest exit $?" >> "$OUT/env.txt"
wait $P2 $P3 $P4
cat "$OUT/env.txt"
tail -n 15 "$OUT/pytest_gpu.txt"
grep -h "cells pass" "$OUT"/matrix_*_cuda.md
sed -n '1,14p' "$OUT/gate_cuda.md"
# one archive: the device returns a limited number of files
(cd "$OUT" && tar czf results.tgz --exclude results.tgz . && find . -type f ! -name results.tgz ! -name env.txt -delete)
