#!/usr/bin/env bash
# GPU (device tool `run`, carrying .gpu modelopt modelopt_recipes upstream_tests): the GPTQ
# export round-trip probe (gpu_gptq_roundtrip_probe.py) on pristine 0.47.0 (unpacked from the
# carried wheel), the fork, and the fork with 0018's correctly rounded divisions put back to
# Triton's approximate '/'. Prints one table.
#     OUT=$OUT SEEDS=42,0,1,2,3 bash benchmarks/gpu_gptq_probe.sh
set -u
. benchmarks/gpu_site.sh
rm -rf /tmp/pristine && mkdir -p /tmp/pristine
python3 -m zipfile -e .gpu/nvidia_modelopt-0.47.0-py3-none-any.whl /tmp/pristine
# fork-pre-0018: 0018's three divisions back to Triton's '/' (kernel element, block scale, scalar element)
rm -rf /tmp/forkb && mkdir -p /tmp/forkb && cp -r modelopt modelopt_recipes /tmp/forkb/
for f in modelopt/torch/kernels/quantization/common/nvfp4_quant.py modelopt/torch/kernels/quantization/gemm/fp4_kernel_hopper.py; do
  sed -i -e 's|libdevice.div_rn(block_amax, 6.0 \* global_scale)|block_amax / (6.0 * global_scale)|' \
         -e 's|libdevice.div_rn(x_abs, scale_safe)|x_abs / scale_safe|' \
         -e 's|libdevice.div_rn(x_abs, block_max_quant_broadcast)|x_abs / block_max_quant_broadcast|' /tmp/forkb/$f
done
grep -rn "div_rn(" /tmp/forkb/modelopt/torch/kernels/quantization/ && echo "forkb: an edit did not apply"
# series 0001-0017 (a tree benchmarks/gpu_bisect_upstream.sh packed), when carried
trees="pristine:/tmp/pristine"
rm -rf /tmp/recipes && mkdir -p /tmp/recipes && cp -r modelopt_recipes /tmp/recipes/   # for trees without it
[ -f .gpu/prefix/0017.tgz ] && { rm -rf /tmp/p17 && mkdir -p /tmp/p17 && tar xzf .gpu/prefix/0017.tgz -C /tmp/p17 && trees="$trees series-0001-0017:/tmp/p17"; }
for t in $trees fork:$PWD fork-pre-0018:/tmp/forkb; do
  PYTHONPATH=$SITE:${t#*:}:/tmp/recipes python3 benchmarks/gpu_gptq_roundtrip_probe.py "${t%%:*}" "${SEEDS:-42,0,1,2,3}" \
    2> "$OUT/probe-${t%%:*}.err" | grep '^|' | { [ "${t%%:*}" = pristine ] && cat || tail -n +3; }
  tail -3 "$OUT/probe-${t%%:*}.err" | grep -i error
done
