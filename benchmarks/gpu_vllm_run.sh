#!/usr/bin/env bash
# One call on the GPU machine (device tool), from the repo root, after the vllm-kit is installed
# (its three-call carry, ../shared/tools/vllm-kit/README.md; /tmp/site). Carried, git-ignored:
#   .gpu/whl/*.whl      ModelOpt's run-time dependencies for python 3.12 (transformers 5.14.1, ...)
#   modelopt/           the generated tree (the series under test)
#   .gpu/base-tree.tgz  optional: another generated tree (e.g. the series before a change), run with BASE=1
# Sets up /tmp/mo-site (benchmarks/gpu_site.sh), then runs benchmarks/gpu_vllm_matrix.py "$@" (BASE=1: with the tree from
# .gpu/base-tree.tgz first on the path). Writes $OUT/results.tgz and prints the table.
set -u
. benchmarks/gpu_site.sh
# vLLM 0.25.1 runs with transformers 5.14.1 (the version the checkpoints are exported with, within
# vLLM's transformers>=5.5.3): with the image's 5.17, Gemma4TextConfig is heterogeneous (per_layer_config)
# and vLLM's config.head_dim raises AmbiguousGlobalPerLayerAttributeError. VLLM_TF=image keeps 5.17.
if [ ! -d /tmp/tf514/transformers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tf514 .gpu/whl/transformers-*.whl \
    .gpu/whl/tokenizers-*.whl >> "$OUT/mo-site-install.log" 2>&1
fi
VSITE=/tmp/tf514:/tmp/site
[ "${VLLM_TF:-}" = image ] && VSITE=/tmp/site
RUN=${RUN:-run}
# The NVFP4 fake-quant Triton kernel must compile and agree with the PyTorch path before the matrix
(cd /tmp && PYTHONPATH=$SITE:$OLDPWD python3 - <<'PY'
import torch
from modelopt.torch.kernels.quantization.gemm import fp4_kernel_hopper as k
from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch
torch.manual_seed(0)
for dt in (torch.float32, torch.bfloat16):
    x = (torch.randn(512, 1024) * 3).to(dt)
    amax = x.float().abs().amax()
    gs = (amax.cuda() / (6.0 * 448.0)).cpu()
    a = k.fp4_fake_quant_block(x.cuda(), amax.cuda()).cpu()
    b = nvfp4_fake_quant_torch(x, amax, 16, global_scale=gs)
    print("kernel check", dt, "differing elements", int((a != b).sum()), "of", a.numel())
PY
) 2>&1 | tail -3 | tee -a "$OUT/env_$RUN.txt"
if ! grep -q "kernel check torch.bfloat16" "$OUT/env_$RUN.txt" && [ -d .gpu/kernel-fallback ]; then
  echo "kernel check failed: running with upstream's kernel files (.gpu/kernel-fallback)" | tee -a "$OUT/env_$RUN.txt"
  cp .gpu/kernel-fallback/nvfp4_quant.py modelopt/torch/kernels/quantization/common/nvfp4_quant.py
  cp .gpu/kernel-fallback/fp4_kernel_hopper.py modelopt/torch/kernels/quantization/gemm/fp4_kernel_hopper.py
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  (cd /tmp && PYTHONPATH=$SITE:$OLDPWD python3 -c "import torch, transformers, modelopt; print('modelopt side: torch', torch.__version__, 'transformers', transformers.__version__, 'modelopt', modelopt.__version__, modelopt.__file__)")
  (cd /tmp && PYTHONPATH=$VSITE:$OLDPWD python3 -c "import vllm, transformers; print('vllm side: vllm', vllm.__version__, 'transformers', transformers.__version__)")
} >> "$OUT/env_$RUN.txt" 2>&1
cat "$OUT/env_$RUN.txt"
python3 benchmarks/gpu_vllm_matrix.py --out "$OUT/$RUN" --mo-site "$SITE" --vllm-site "$VSITE" "$@"
rc=$?
(cd "$OUT" && tar czf "$RUN.tgz" --exclude='*.safetensors' --exclude='*.pt' "$RUN" "env_$RUN.txt" && rm -rf "$RUN")
exit $rc
